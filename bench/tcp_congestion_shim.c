// LD_PRELOAD shim for benchmarks: every TCP socket the process creates asks
// for the congestion control named in KILN_SHIM_CONGESTION (e.g. "cubic").
//
// Why: a network namespace cannot change net.ipv4.tcp_congestion_control
// on this host (the sysctl is read-only there), Kiln picks its own per socket
// (KILN_TCP_CONGESTION), and Gloo has no such knob. To compare the two under
// the *same* congestion control, bench/torch_backend.sh --congestion cubic
// preloads this into the Python process that runs both backends.
//
// Build: cc -O2 -shared -fPIC -o tcp_congestion_shim.so tcp_congestion_shim.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*socket_fn)(int, int, int);

int socket(int domain, int type, int protocol) {
  static socket_fn real_socket;
  if (!real_socket) real_socket = (socket_fn)dlsym(RTLD_NEXT, "socket");
  int fd = real_socket(domain, type, protocol);
  const char* want = getenv("KILN_SHIM_CONGESTION");
  int is_tcp = (domain == AF_INET || domain == AF_INET6) &&
               (type & 0xf) == SOCK_STREAM;
  if (fd >= 0 && is_tcp && want && *want &&
      setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, want, strlen(want)) != 0) {
    // A benchmark that silently ran under another algorithm would lie.
    fprintf(stderr, "tcp_congestion_shim: cannot set TCP_CONGESTION=%s\n", want);
    abort();
  }
  return fd;
}
