#include "kiln/store/tcp/connection.h"

#include <fmt/format.h>
#include <poll.h>

#include "kiln/base/auth/handshake.h"

namespace kiln::store::tcp {

using namespace ::kiln::net;  // socket helpers (kiln/base/socket.h)

Result<std::unique_ptr<Connection>> Connection::open(const std::string& host, std::uint16_t port,
                                                     const std::string& token,
                                                     Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(Fd fd, connect_tcp(host, port, deadline));
  KILN_RETURN_IF_ERROR(send_all(fd.get(), encode_hello(), deadline).with_context("send hello"));
  std::string hello(kHelloBytes, '\0');
  KILN_RETURN_IF_ERROR(
      recv_exact(fd.get(), hello.data(), hello.size(), deadline).with_context("await hello"));
  KILN_RETURN_IF_ERROR(check_hello(hello).with_context("server hello"));
  auth::Initiator auth(token, "store");
  std::string challenge(auth::kChallengeBytes, '\0');
  KILN_RETURN_IF_ERROR(recv_exact(fd.get(), challenge.data(), challenge.size(), deadline)
                           .with_context("await authentication challenge"));
  KILN_ASSIGN_OR_RETURN(std::string proof, auth.answer(challenge));
  KILN_RETURN_IF_ERROR(send_all(fd.get(), proof, deadline).with_context("send authentication"));
  std::string verdict(auth::kVerdictBytes, '\0');
  KILN_RETURN_IF_ERROR(recv_exact(fd.get(), verdict.data(), verdict.size(), deadline)
                           .with_context("await authentication verdict"));
  KILN_RETURN_IF_ERROR(auth.check_verdict(verdict));
  return std::unique_ptr<Connection>(new Connection(std::move(fd)));
}

Result<Response> Connection::call(const Request& request, Deadline deadline) {
  std::string frame;
  append_request(request, &frame);
  KILN_RETURN_IF_ERROR(send_all(fd_.get(), frame, deadline));
  char header[kFrameHeaderBytes];
  KILN_RETURN_IF_ERROR(recv_exact(fd_.get(), header, sizeof(header), deadline));
  KILN_ASSIGN_OR_RETURN(std::uint32_t n,
                        decode_frame_header(std::string_view(header, sizeof(header))));
  std::string body(n, '\0');
  KILN_RETURN_IF_ERROR(recv_exact(fd_.get(), body.data(), body.size(), deadline));
  KILN_ASSIGN_OR_RETURN(Response response, decode_response(request.op, body));
  // One call at a time per connection, so the next reply must be ours.
  if (response.id != request.id) {
    return data_loss(
        fmt::format("reply for request {} while awaiting {}", response.id, request.id));
  }
  return response;
}

bool Connection::idle_and_open() const {
  // An idle connection has nothing to read: readable means EOF or a reset.
  pollfd p{fd_.get(), POLLIN, 0};
  int rc = ::poll(&p, 1, 0);
  return rc == 0;
}

}  // namespace kiln::store::tcp
