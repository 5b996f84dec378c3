/* A plain two-process shared-memory ring allreduce: the baseline that
 * `kiln bench comm`'s shm allreduce is held against (issue 24), with the
 * same sweep, the same timing rules and the same limit as `kiln bench comm`.
 *
 *   shm_ring [-b 64M] [-e 256M] [-f 4] [-n 5] [-w 2] [--slot-bytes 128K]
 *            [--slots 8] [--bell] [--header] [--copy-in memcpy|vector|stream]
 *            [--fused [--stage-bytes 16K]] [--direct]
 *
 * The ring, as Kiln's shm transport moves it: each rank owns a FIFO of
 * `--slots` slots of `--slot-bytes` in shared memory that its peer writes.
 * Reduce-scatter: each rank copies the peer's half of its input into the
 * peer's FIFO; the peer folds each slot with its own input into its output
 * (out = in + slot, non-temporal stores). Allgather: each rank copies its
 * reduced half into the peer's FIFO, and the peer copies each slot out
 * (non-temporal stores). One store fence per phase. float32 sum, out of place.
 * What Kiln's pair does besides, each behind a flag so its cost can be
 * measured on its own:
 *   --bell     a locked add on the peer's doorbell word per slot filled or
 *              freed, and the waiter reading its own doorbell every poll
 *              (Kiln's Doorbell::ring and Context::wait);
 *   --header   a 64-byte header per slot (message and chunk length), written
 *              by the sender and checked by the receiver.
 * And other shapes, to see what bounds the ring:
 *   --copy-in  how a sender fills a slot: glibc memcpy (default), AVX-512
 *              plain stores, or non-temporal stores;
 *   --fused    the owner of a half reduces each incoming chunk into a staging
 *              block, lands it and copies it into a second FIFO back to the
 *              peer (no re-read of the reduced half for the allgather);
 *   --direct   no FIFO: both ranks' buffers are in shared memory and each
 *              rank reduces its half from both inputs into both outputs (what
 *              Kiln's direct allreduce on SharedBuffers does).
 *
 * Timing, as `kiln bench comm --json`: per size `-w` untimed iterations, then
 * `-n` timed ones; before each timed iteration and after the last, a limit
 * pass (every rank runs a[i] = b[i] + c[i] over 64 MiB arrays with AVX-512
 * plain stores; bandwidth counted as 3 arrays, summed over ranks, as long as
 * the slowest rank took); iteration i's fraction is its busbw over the mean
 * of the passes on either side of it divided by 4 (Note [The memory limit of
 * a local allreduce] in cli/bench_comm_cmd.cc); limit_fraction is the median
 * of those, time_us the median of each iteration's slowest rank.
 * Prints one JSON document:
 *   {"library":"shm_ring","world_size":2,"slot_bytes","slots","bell","header",
 *    "copy_in","stream_add_gbps","results":[{"bytes","time_us","algbw_gbps",
 *    "busbw_gbps","limit_busbw_gbps","limit_fraction","check"}]}
 * (busbw = algbw for two ranks.) bench/shm_ring_vs_kiln.sh runs it beside
 * `kiln bench comm`.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <immintrin.h>
#include <sched.h>

#define MAX_ITERS 1000

static void die(const char* msg, const char* arg) {
  fprintf(stderr, "shm_ring: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  exit(2);
}

/* "4K", "256M", "1G", "4096": binary suffixes, as kiln's parse_bytes. */
static int parse_bytes(const char* s, uint64_t* out) {
  char* end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s) return -1;
  int shift = 0;
  if (*end) {
    switch (toupper((unsigned char)*end)) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      default: return -1;
    }
    if (end[1] && strcmp(end + 1, "iB") && strcmp(end + 1, "B")) return -1;
  }
  *out = (uint64_t)v << shift;
  return 0;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}
static double median(const double* v, int n) {
  double s[MAX_ITERS + 1];
  memcpy(s, v, n * sizeof(double));
  qsort(s, n, sizeof(double), cmp_double);
  return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* --- kernels: one 64-byte access per cache line where the CPU has AVX-512
 * (as kiln/comm/reduce.cc), SSE2 otherwise. n is a multiple of 16 floats. */
__attribute__((target("avx512f"))) static void add_stream_avx512(float* d, const float* a,
                                                                const float* b, size_t n) {
  for (size_t i = 0; i < n; i += 16)
    _mm512_stream_ps(d + i, _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
}
__attribute__((target("avx512f"))) static void copy_stream_avx512(float* d, const float* s,
                                                                 size_t n) {
  for (size_t i = 0; i < n; i += 16) _mm512_stream_ps(d + i, _mm512_loadu_ps(s + i));
}
__attribute__((target("avx512f"))) static void copy_avx512(float* d, const float* s, size_t n) {
  for (size_t i = 0; i < n; i += 16) _mm512_storeu_ps(d + i, _mm512_loadu_ps(s + i));
}
__attribute__((target("avx512f"))) static void add_plain_avx512(float* d, const float* a,
                                                               const float* b, size_t n) {
  for (size_t i = 0; i < n; i += 16)
    _mm512_storeu_ps(d + i, _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
}
static void add_stream_sse2(float* d, const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; i += 4)
    _mm_stream_ps(d + i, _mm_add_ps(_mm_loadu_ps(a + i), _mm_loadu_ps(b + i)));
}
static void copy_stream_sse2(float* d, const float* s, size_t n) {
  for (size_t i = 0; i < n; i += 4) _mm_stream_ps(d + i, _mm_loadu_ps(s + i));
}
static void copy_sse2(float* d, const float* s, size_t n) {
  for (size_t i = 0; i < n; i += 4) _mm_storeu_ps(d + i, _mm_loadu_ps(s + i));
}
static void add_plain_sse2(float* d, const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; i += 4)
    _mm_storeu_ps(d + i, _mm_add_ps(_mm_loadu_ps(a + i), _mm_loadu_ps(b + i)));
}
static void (*add_stream)(float*, const float*, const float*, size_t);
static void (*copy_stream)(float*, const float*, size_t);
static void (*copy_vector)(float*, const float*, size_t);
static void (*add_plain)(float*, const float*, const float*, size_t);

/* --- shared state --- */
typedef struct {
  _Alignas(64) _Atomic uint64_t tail; /* slots written; the sender stores */
  _Alignas(64) _Atomic uint64_t head; /* slots consumed; the receiver stores */
} Fifo;
typedef struct {
  _Alignas(64) _Atomic uint32_t word;
} Bell;
typedef struct {
  _Alignas(64) _Atomic long arrived[2];
  _Alignas(64) double secs[2];
  _Alignas(64) double times[2][MAX_ITERS];
  int bad[2];
  Fifo fifo[2][2]; /* fifo[r][kind]: into rank r; kind 1 carries --fused results */
  Bell bell[2]; /* bell[r]: rank r's doorbell */
} Shared;
typedef struct {
  uint64_t message_len, chunk_bytes;
  char pad[48];
} SlotHeader;

typedef struct {
  uint64_t min_b, max_b;
  double factor;
  int iters, warmup;
  size_t slot_bytes;
  int slots;
  int bell, header, copy_in, fused, direct;
  size_t stage_bytes;
} Args;
enum { kCopyMemcpy, kCopyVector, kCopyStream };

static Shared* sh;
static char* slot_base;
static Args A;

static size_t slot_stride(void) { return A.slot_bytes + (A.header ? sizeof(SlotHeader) : 0); }
static char* slot_at(int dest, int kind, uint64_t seq) {
  return slot_base + (((size_t)dest * 2 + kind) * A.slots + seq % A.slots) * slot_stride();
}

/* Into a slot the peer reads: as the flag says. */
static void copy_in(void* slot, const float* src, size_t m) {
  switch (A.copy_in) {
    case kCopyMemcpy: memcpy(slot, src, m * sizeof(float)); break;
    case kCopyVector: copy_vector(slot, src, m); break;
    case kCopyStream: copy_stream(slot, src, m); _mm_sfence(); break; /* before the tail */
  }
}

/* Spins, yielding now and then: a rank whose peer was preempted by another
 * process should give the core back rather than spin out its time slice. */
static void idle(unsigned* rounds) {
  if (++*rounds % 256 == 0) sched_yield();
  else _mm_pause();
}

static void barrier(int r, long* gen) {
  unsigned rounds = 0;
  ++*gen;
  atomic_store(&sh->arrived[r], *gen);
  while (atomic_load(&sh->arrived[1 - r]) < *gen) idle(&rounds);
}

static void ring_bell(int peer) {
  if (A.bell) atomic_fetch_add(&sh->bell[peer].word, 1);
}

/* One message of `len` floats: send src[send_lo, send_hi) to the peer while
 * landing the peer's chunks at dst[recv_lo, recv_hi) (reduce: dst = local +
 * slot; else dst = slot). */
static uint64_t out_tail[2], in_head[2];
static int move(int r, const float* src, size_t send_lo, size_t send_hi, float* dst,
                const float* local, size_t recv_lo, size_t recv_hi, uint64_t message_len) {
  const int p = 1 - r;
  const size_t cn = A.slot_bytes / sizeof(float);
  Fifo* out = &sh->fifo[p][0];
  Fifo* in = &sh->fifo[r][0];
  size_t so = send_lo, ro = recv_lo;
  unsigned rounds = 0;
  while (so < send_hi || ro < recv_hi) {
    const size_t before = so + ro;
    if (A.bell) (void)atomic_load(&sh->bell[r].word); /* as Context::wait reads seq each round */
    uint64_t head = atomic_load_explicit(&out->head, memory_order_acquire);
    while (so < send_hi && out_tail[0] - head < (uint64_t)A.slots) {
      size_t m = send_hi - so < cn ? send_hi - so : cn;
      char* s = slot_at(p, 0, out_tail[0]);
      if (A.header) {
        SlotHeader* h = (SlotHeader*)s;
        h->message_len = message_len;
        h->chunk_bytes = m * sizeof(float);
        s += sizeof(SlotHeader);
      }
      copy_in(s, src + so, m);
      atomic_store_explicit(&out->tail, ++out_tail[0], memory_order_release);
      ring_bell(p);
      so += m;
      if (out_tail[0] - head >= (uint64_t)A.slots) head = atomic_load_explicit(&out->head, memory_order_acquire);
    }
    uint64_t tail = atomic_load_explicit(&in->tail, memory_order_acquire);
    while (ro < recv_hi && in_head[0] < tail) {
      size_t m = recv_hi - ro < cn ? recv_hi - ro : cn;
      char* s = slot_at(r, 0, in_head[0]);
      if (A.header) {
        SlotHeader* h = (SlotHeader*)s;
        if (h->message_len != message_len || h->chunk_bytes != m * sizeof(float)) return -1;
        s += sizeof(SlotHeader);
      }
      if (local) {
        add_stream(dst + ro, local + ro, (const float*)s, m);
      } else {
        copy_stream(dst + ro, (const float*)s, m);
      }
      atomic_store_explicit(&in->head, ++in_head[0], memory_order_release);
      ring_bell(p);
      ro += m;
      if (in_head[0] == tail) tail = atomic_load_explicit(&in->tail, memory_order_acquire);
    }
    if (so + ro == before) idle(&rounds);
  }
  _mm_sfence();
  return 0;
}

/* --fused: the owner of a half folds each incoming chunk with its input into
 * an L1-sized staging block, lands it (non-temporal) and copies it into a
 * second FIFO back to the peer, so the allgather does not read the reduced
 * half back from memory: 2 bytes of memory traffic per byte per rank instead
 * of 2.5. */
static float* stage;
static int fused(int r, const float* in, float* out, size_t peer_lo, size_t peer_hi,
                 size_t mine_lo, size_t mine_hi) {
  const int p = 1 - r;
  const size_t cn = A.slot_bytes / sizeof(float), sn = A.stage_bytes / sizeof(float);
  Fifo* data_out = &sh->fifo[p][0];
  Fifo* data_in = &sh->fifo[r][0];
  Fifo* result_out = &sh->fifo[p][1];
  Fifo* result_in = &sh->fifo[r][1];
  size_t so = peer_lo, ro = mine_lo, go = peer_lo;
  unsigned rounds = 0;
  while (so < peer_hi || ro < mine_hi || go < peer_hi) {
    const size_t before = so + ro + go;
    uint64_t head = atomic_load_explicit(&data_out->head, memory_order_acquire);
    while (so < peer_hi && out_tail[0] - head < (uint64_t)A.slots) {
      size_t m = peer_hi - so < cn ? peer_hi - so : cn;
      copy_in(slot_at(p, 0, out_tail[0]), in + so, m);
      atomic_store_explicit(&data_out->tail, ++out_tail[0], memory_order_release);
      so += m;
    }
    uint64_t tail = atomic_load_explicit(&data_in->tail, memory_order_acquire);
    uint64_t rhead = atomic_load_explicit(&result_out->head, memory_order_acquire);
    while (ro < mine_hi && in_head[0] < tail && out_tail[1] - rhead < (uint64_t)A.slots) {
      size_t m = mine_hi - ro < cn ? mine_hi - ro : cn;
      const float* s = (const float*)slot_at(r, 0, in_head[0]);
      float* back = (float*)slot_at(p, 1, out_tail[1]);
      for (size_t b = 0; b < m; b += sn) {
        size_t k = m - b < sn ? m - b : sn;
        add_plain(stage, in + ro + b, s + b, k);
        copy_stream(out + ro + b, stage, k);
        copy_in(back + b, stage, k);
      }
      atomic_store_explicit(&result_out->tail, ++out_tail[1], memory_order_release);
      atomic_store_explicit(&data_in->head, ++in_head[0], memory_order_release);
      ro += m;
    }
    uint64_t gtail = atomic_load_explicit(&result_in->tail, memory_order_acquire);
    while (go < peer_hi && in_head[1] < gtail) {
      size_t m = peer_hi - go < cn ? peer_hi - go : cn;
      copy_stream(out + go, (const float*)slot_at(r, 1, in_head[1]), m);
      atomic_store_explicit(&result_in->head, ++in_head[1], memory_order_release);
      go += m;
    }
    if (so + ro + go == before) idle(&rounds);
  }
  _mm_sfence();
  return 0;
}

/* --direct: no FIFO. Every rank's input and output live in shared memory that
 * the peer maps (what registered buffers would give), so the owner of a half
 * reads both inputs and writes both outputs (non-temporal): 2 bytes of
 * memory traffic per byte per rank, and no copy through a slot. */
static float* shared_in[2];
static float* shared_out[2];
static long* direct_gen;
__attribute__((target("avx512f"))) static void add_stream2_avx512(float* d0, float* d1,
                                                                 const float* a, const float* b,
                                                                 size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    __m512 v = _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    _mm512_stream_ps(d0 + i, v);
    _mm512_stream_ps(d1 + i, v);
  }
}
static int direct(int r, size_t mine_lo, size_t mine_hi) {
  const int p = 1 - r;
  barrier(r, direct_gen); /* both inputs are ready, both outputs free */
  add_stream2_avx512(shared_out[r] + mine_lo, shared_out[p] + mine_lo, shared_in[r] + mine_lo,
                     shared_in[p] + mine_lo, mine_hi - mine_lo);
  _mm_sfence();
  barrier(r, direct_gen); /* the peer's half of my output has landed */
  return 0;
}

static int allreduce(int r, const float* in, float* out, size_t n) {
  /* Each rank holds half: rank 0 the first, rank 1 the second. */
  size_t half = n / 2;
  size_t mine_lo = r == 0 ? 0 : half, mine_hi = r == 0 ? half : n;
  size_t peer_lo = r == 0 ? half : 0, peer_hi = r == 0 ? n : half;
  if (A.fused) return fused(r, in, out, peer_lo, peer_hi, mine_lo, mine_hi);
  if (A.direct) return direct(r, mine_lo, mine_hi);
  if (move(r, in, peer_lo, peer_hi, out, in, mine_lo, mine_hi, (peer_hi - peer_lo) * 4) != 0)
    return -1;
  return move(r, out, mine_lo, mine_hi, out, NULL, peer_lo, peer_hi, (mine_hi - mine_lo) * 4);
}

#define STREAM_FLOATS ((size_t)16 << 20) /* 64 MiB per array, as kiln bench comm */

/* One limit pass: GB/s summed over both ranks, as long as the slowest took. */
static double limit_pass(int r, long* gen, float* a, const float* b, const float* c) {
  barrier(r, gen);
  double t0 = now();
  add_plain(a, b, c, STREAM_FLOATS);
  sh->secs[r] = now() - t0;
  barrier(r, gen);
  double secs = sh->secs[0] > sh->secs[1] ? sh->secs[0] : sh->secs[1];
  barrier(r, gen); /* both have read secs before the next pass writes it */
  return 3.0 * STREAM_FLOATS * sizeof(float) * 2 / secs / 1e9;
}

static void* alloc_touched(size_t bytes) {
  void* p = NULL;
  if (posix_memalign(&p, 4096, bytes) != 0) die("out of memory", NULL);
  memset(p, 0, bytes);
  return p;
}

static void rank_main(int r) {
  long gen = 0;
  const size_t max_n = A.max_b / sizeof(float);
  float* in = A.direct ? shared_in[r] : alloc_touched(A.max_b);
  float* out = A.direct ? shared_out[r] : alloc_touched(A.max_b);
  direct_gen = &gen;
  memset(out, 0, A.max_b);
  float* sa = alloc_touched(STREAM_FLOATS * 4);
  float* sb = alloc_touched(STREAM_FLOATS * 4);
  float* sc = alloc_touched(STREAM_FLOATS * 4);
  stage = alloc_touched(A.stage_bytes);
  for (size_t i = 0; i < STREAM_FLOATS; ++i) sb[i] = 1, sc[i] = 2;
  for (size_t i = 0; i < max_n; ++i) in[i] = (float)(r + 1 + i % 7);
  barrier(r, &gen);
  for (int i = 0; i < A.warmup; ++i) allreduce(r, in, out, max_n);
  double stream_first = limit_pass(r, &gen, sa, sb, sc);
  if (r == 0) {
    printf("{\"library\":\"shm_ring\",\"world_size\":2,\"slot_bytes\":%zu,\"slots\":%d,"
           "\"bell\":%s,\"header\":%s,\"copy_in\":\"%s\",\"fused\":%s,\"direct\":%s,\"stage_bytes\":%zu,"
           "\"stream_add_gbps\":%.3f,\"results\":[",
           A.slot_bytes, A.slots, A.bell ? "true" : "false", A.header ? "true" : "false",
           A.copy_in == kCopyMemcpy ? "memcpy" : A.copy_in == kCopyVector ? "vector" : "stream",
           A.fused ? "true" : "false", A.direct ? "true" : "false", A.stage_bytes, stream_first);
  }
  int first = 1;
  for (double bd = (double)A.min_b; bd <= (double)A.max_b * 1.0001; bd *= A.factor) {
    size_t n = ((size_t)bd / sizeof(float)) & ~(size_t)31; /* whole lines per half */
    size_t bytes = n * sizeof(float);
    for (int i = 0; i < A.warmup; ++i) allreduce(r, in, out, n);
    double passes[MAX_ITERS + 1];
    int failed = 0;
    for (int i = 0; i < A.iters; ++i) {
      passes[i] = limit_pass(r, &gen, sa, sb, sc);
      double t0 = now();
      failed |= allreduce(r, in, out, n);
      sh->times[r][i] = now() - t0;
    }
    passes[A.iters] = limit_pass(r, &gen, sa, sb, sc); /* also orders times[] */
    size_t bad = SIZE_MAX;
    for (size_t i = 0; i < n && bad == SIZE_MAX; ++i)
      if (out[i] != (float)(3 + 2 * (i % 7))) bad = i;
    sh->bad[r] = failed || bad != SIZE_MAX;
    if (bad != SIZE_MAX) fprintf(stderr, "shm_ring: rank %d: element %zu is %g\n", r, bad, out[bad]);
    barrier(r, &gen);
    if (r == 0) {
      double slowest[MAX_ITERS], fractions[MAX_ITERS];
      for (int i = 0; i < A.iters; ++i) {
        slowest[i] = sh->times[0][i] > sh->times[1][i] ? sh->times[0][i] : sh->times[1][i];
        double limit = (passes[i] + passes[i + 1]) / 2 / 4;
        fractions[i] = bytes / slowest[i] / 1e9 / limit;
      }
      double t = median(slowest, A.iters);
      printf("%s{\"bytes\":%zu,\"time_us\":%.1f,\"algbw_gbps\":%.3f,\"busbw_gbps\":%.3f,"
             "\"limit_busbw_gbps\":%.3f,\"limit_fraction\":%.4f,\"check\":\"%s\"}",
             first ? "" : ",", bytes, t * 1e6, bytes / t / 1e9, bytes / t / 1e9,
             median(passes, A.iters + 1) / 4, median(fractions, A.iters),
             sh->bad[0] || sh->bad[1] ? "fail" : "ok");
      fflush(stdout);
    }
    first = 0;
    barrier(r, &gen);
  }
  if (r == 0) printf("]}\n");
  fflush(stdout);
  _exit(sh->bad[0] || sh->bad[1] ? 1 : 0);
}

int main(int argc, char** argv) {
  A = (Args){64u << 20, 256u << 20, 4, 5, 2, 128u << 10, 8, 0, 0, kCopyMemcpy, 0, 0, 16u << 10};
  for (int i = 1; i < argc; ++i) {
    const char* o = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    uint64_t b;
    if (!strcmp(o, "--bell")) { A.bell = 1; continue; }
    if (!strcmp(o, "--header")) { A.header = 1; continue; }
    if (!strcmp(o, "--fused")) { A.fused = 1; continue; }
    if (!strcmp(o, "--direct")) { A.direct = 1; continue; }
    if (!v) die("option needs a value", o);
    ++i;
    if (!strcmp(o, "-b")) { if (parse_bytes(v, &A.min_b)) die("bad size", v); }
    else if (!strcmp(o, "-e")) { if (parse_bytes(v, &A.max_b)) die("bad size", v); }
    else if (!strcmp(o, "-f")) A.factor = atof(v);
    else if (!strcmp(o, "-n")) A.iters = atoi(v);
    else if (!strcmp(o, "-w")) A.warmup = atoi(v);
    else if (!strcmp(o, "--slot-bytes")) { if (parse_bytes(v, &b)) die("bad size", v); A.slot_bytes = b; }
    else if (!strcmp(o, "--slots")) A.slots = atoi(v);
    else if (!strcmp(o, "--copy-in")) {
      if (!strcmp(v, "vector")) A.copy_in = kCopyVector;
      else if (!strcmp(v, "stream")) A.copy_in = kCopyStream;
      else if (strcmp(v, "memcpy")) die("--copy-in: expected memcpy, vector or stream", v);
    } else if (!strcmp(o, "--stage-bytes")) {
      if (parse_bytes(v, &b) || b < 64 || b % 64) die("--stage-bytes: a multiple of 64", v);
      A.stage_bytes = b;
    } else die("unknown option", o);
  }
  if (A.iters < 1 || A.iters > MAX_ITERS || A.warmup < 0) die("need 1 <= -n <= 1000, -w >= 0", NULL);
  if (A.factor <= 1 || A.min_b < 4096 || A.min_b > A.max_b) die("need 4K <= -b <= -e, -f > 1", NULL);
  if (A.direct && !__builtin_cpu_supports("avx512f")) die("--direct needs AVX-512", NULL);
  if (A.slot_bytes < 4096 || A.slot_bytes % 64 || A.slots < 1) die("need --slot-bytes >= 4K, a multiple of 64, --slots >= 1", NULL);
  if (__builtin_cpu_supports("avx512f")) {
    add_stream = add_stream_avx512, copy_stream = copy_stream_avx512;
    copy_vector = copy_avx512, add_plain = add_plain_avx512;
  } else {
    add_stream = add_stream_sse2, copy_stream = copy_stream_sse2;
    copy_vector = copy_sse2, add_plain = add_plain_sse2;
  }
  sh = mmap(NULL, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  slot_base = mmap(NULL, 4 * A.slots * slot_stride(), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (sh == MAP_FAILED || slot_base == MAP_FAILED) die("mmap", strerror(errno));
  memset(sh, 0, sizeof(Shared));
  for (int r = 0; r < 2 && A.direct; ++r) {
    shared_in[r] = mmap(NULL, A.max_b, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    shared_out[r] = mmap(NULL, A.max_b, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared_in[r] == MAP_FAILED || shared_out[r] == MAP_FAILED) die("mmap", strerror(errno));
  }
  pid_t kids[2];
  for (int r = 0; r < 2; ++r) {
    kids[r] = fork();
    if (kids[r] < 0) die("fork", strerror(errno));
    if (kids[r] == 0) rank_main(r);
  }
  int rc = 0;
  for (int r = 0; r < 2; ++r) {
    int st = 0;
    if (waitpid(kids[r], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = 1;
  }
  return rc;
}
