// How fast the kernel copies out of another process (process_vm_readv,
// cross-memory attach) on this host, beside a plain memcpy of the same
// bytes: the ceiling of Kiln's single-copy allreduce (Note [Single-copy
// allreduce through the kernel], kiln/comm/algo/cma.cc), which reads N
// bytes per rank through it. Issue 24, docs/perf.md.
//
//   gcc -O2 -o /tmp/cma_read bench/cma_read.c
//   /work/bin/cpu-lock timed /tmp/cma_read 256      # MiB read, 256 KiB pieces
//
// The parent fills N bytes; a forked child reads them in 256 KiB pieces into
// a cache-resident staging buffer (as the allreduce does), then in 4 MiB
// pieces straight into a buffer of its own, then memcpy()s its own N bytes
// into the staging buffer. Best of 3 passes each, GB/s.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double best_of_3(void (*pass)(void*), void* arg) {
  double best = 1e9;
  for (int rep = 0; rep < 3; ++rep) {
    double t0 = now();
    pass(arg);
    double t = now() - t0;
    if (t < best) best = t;
  }
  return best;
}

struct Job {
  pid_t owner;
  char* src;  // in the owner
  char* mine;
  char* stage;
  size_t bytes, piece;
};

static void read_pieces(void* a) {
  struct Job* j = a;
  for (size_t o = 0; o + j->piece <= j->bytes; o += j->piece) {
    char* to = j->piece > (256u << 10) ? j->mine + o : j->stage;
    struct iovec l = {to, j->piece}, r = {j->src + o, j->piece};
    if (process_vm_readv(j->owner, &l, 1, &r, 1, 0) != (ssize_t)j->piece) {
      perror("process_vm_readv");
      exit(1);
    }
  }
}

static void copy_pieces(void* a) {
  struct Job* j = a;
  for (size_t o = 0; o + j->piece <= j->bytes; o += j->piece) memcpy(j->stage, j->mine + o, j->piece);
}

int main(int argc, char** argv) {
  const size_t bytes = (size_t)(argc > 1 ? atoi(argv[1]) : 256) << 20;
  if (bytes < (4u << 20)) {
    fprintf(stderr, "cma_read: read at least 4 MiB\n");
    return 2;
  }
  char* src = malloc(bytes);
  if (src == NULL) return 1;
  memset(src, 1, bytes);
  const pid_t owner = getpid();
  const pid_t child = fork();
  if (child == 0) {
    struct Job j = {owner, src, malloc(bytes), aligned_alloc(4096, 256u << 10), bytes, 256u << 10};
    memset(j.mine, 0, bytes);
    memset(j.stage, 0, 256u << 10);
    printf("%zu MiB: process_vm_readv 256 KiB pieces -> staging %.2f GB/s", bytes >> 20,
           bytes / best_of_3(read_pieces, &j) / 1e9);
    j.piece = 4u << 20;
    printf(", 4 MiB pieces -> own buffer %.2f GB/s", bytes / best_of_3(read_pieces, &j) / 1e9);
    j.piece = 256u << 10;
    printf("; memcpy 256 KiB pieces -> staging %.2f GB/s\n", bytes / best_of_3(copy_pieces, &j) / 1e9);
    exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
