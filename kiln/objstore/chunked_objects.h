// ChunkedUpload: one stream of bytes stored as several part-sized objects
// ("chunks"), each a plain put, uploaded in parallel while the caller
// appends; get_chunks_to_file reads them back in parallel.
// The caller keeps the list of chunks (key, size, checksum) somewhere that
// commits them (a checkpoint's manifest): nothing here publishes anything,
// so a writer that dies leaves only ordinary objects, which a listing finds
// and a delete removes (Note [Shards as chunk objects], kiln/ckpt/remote.h).
//
// append() fills a chunk buffer of the store's UploadShape::part_bytes; a
// full buffer is handed to one of UploadShape::parallelism uploader threads
// (started with the first full chunk) and append() goes on with a fresh
// buffer, blocking only while `parallelism` chunks are already in flight:
// at most (parallelism + 1) chunks are held, as in a streaming multipart
// upload, and their buffers are reused from chunk to chunk (the queue of
// uploader threads is BoundedUploaders). The uploader checksums its chunk
// (XXH3-64) before the put. Any failure (after the store's own retries) is
// kept, stops further chunks and is returned by the next append() or
// finish(). One thread uses an upload; its uploader threads are its own.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kiln/objstore/bounded_uploaders.h"
#include "kiln/objstore/object_store.h"

namespace kiln::objstore {

// One stored chunk, in stream order.
struct StoredChunk {
  std::string key;
  std::uint64_t bytes = 0;
  std::uint64_t xxh3 = 0;  // XXH3-64 (seed 0) of its bytes
};

class ChunkedUpload {
 public:
  // Chunk i (from 0) is stored as key_of(i), called on the caller's thread.
  // `store` must outlive the upload; `deadline` bounds all of it.
  ChunkedUpload(ObjectStore& store, std::function<std::string(std::size_t)> key_of,
                Deadline deadline);
  // abort() unless finished.
  ~ChunkedUpload();
  ChunkedUpload(const ChunkedUpload&) = delete;
  ChunkedUpload& operator=(const ChunkedUpload&) = delete;

  Status append(const void* data, std::size_t n);
  // Uploads the last chunk, waits for all, and returns them in order. A
  // stream of no bytes is one empty chunk, so a stored stream always has at
  // least one.
  Result<std::vector<StoredChunk>> finish();
  // Stops the upload and removes the chunks already stored (best effort,
  // with its own short deadline). Idempotent; never after finish() succeeded.
  void abort();
  std::uint64_t bytes() const { return bytes_; }

 private:
  Status hand_over();
  // On an uploader thread: checksums and puts one chunk.
  Status send(BoundedUploaders::Piece& chunk);

  ObjectStore& store_;
  const std::function<std::string(std::size_t)> key_of_;
  const Deadline deadline_;
  const UploadShape shape_;

  // The caller's thread only.
  std::string buf_;
  std::uint64_t bytes_ = 0;
  bool done_ = false;  // finished or aborted

  std::mutex mu_;
  std::map<std::size_t, StoredChunk> stored_;  // guarded by mu_: by index
  // Last: its threads, which call send(), stop before the members above go.
  BoundedUploaders uploaders_;
};

// Downloads `chunks` (in stream order) into the local file `dst` (created or
// truncated), each at its offset in the stream, from up to
// store.upload_shape().parallelism threads, holding that many chunks in
// memory. Checks each chunk's size and checksum: DataLoss naming the chunk
// when one differs. NotFound when a chunk is missing.
Status get_chunks_to_file(ObjectStore& store, const std::vector<StoredChunk>& chunks,
                          const std::string& dst, Deadline deadline);

}  // namespace kiln::objstore
