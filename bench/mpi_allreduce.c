/* MPI_Allreduce baseline for `kiln bench comm -o allreduce`: the same size
 * sweep, the same timing rules and the same JSON schema, so that
 * bench/compare_mpi.sh can put the two side by side.
 *
 *   mpirun -np N mpi_allreduce [-b 4K] [-e 64M] [-f 2] [-n 20] [-w 5] [--check]
 *
 * Timing, as kiln bench comm: fp32 sum, out of place; both buffers allocated
 * once at the largest size and touched before timing (first-touch page faults
 * would otherwise be measured); per size `-w` untimed iterations, then `-n`
 * timed ones, each timed on its own (no barrier in between); the median
 * across iterations, then the max of the medians across ranks. Rank 0 prints
 * one JSON document:
 *   {"op","dtype","world_size","reduce_op","algo","library",
 *    "results":[{"bytes","count","time_us","algbw_gbps","busbw_gbps","check"}]}
 * busbw = algbw * 2(n-1)/n (nccl-tests' PERFORMANCE.md).
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(int rank, const char* msg, const char* arg) {
  if (rank == 0) fprintf(stderr, "mpi_allreduce: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  MPI_Abort(MPI_COMM_WORLD, 2);
  exit(2);
}

/* "4K", "256M", "1G", "4096", "4KiB": binary suffixes, as kiln's parse_bytes. */
static int parse_bytes(const char* s, uint64_t* out) {
  char* end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s) return -1;
  char suffix[4] = {0};
  size_t len = strlen(end);
  if (len > 3) return -1;
  memcpy(suffix, end, len);
  if (len > 0 && (suffix[len - 1] == 'B' || suffix[len - 1] == 'b')) suffix[--len] = 0;
  if (len > 0 && suffix[len - 1] == 'i') suffix[--len] = 0;
  int shift = 0;
  if (len == 1) {
    switch (toupper((unsigned char)suffix[0])) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      default: return -1;
    }
  } else if (len != 0) {
    return -1;
  }
  if (shift > 0 && v > (UINT64_MAX >> shift)) return -1;
  *out = (uint64_t)v << shift;
  return 0;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);

  uint64_t min_b = 4096, max_b = 64ull << 20;
  double factor = 2;
  int iters = 20, warmup = 5, check = 0;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--check") == 0 || strcmp(a, "-c") == 0) {
      check = 1;
      continue;
    }
    if (v == NULL) die(rank, "missing value for", a);
    ++i;
    if (strcmp(a, "-b") == 0) {
      if (parse_bytes(v, &min_b) != 0) die(rank, "bad size for -b", v);
    } else if (strcmp(a, "-e") == 0) {
      if (parse_bytes(v, &max_b) != 0) die(rank, "bad size for -e", v);
    } else if (strcmp(a, "-f") == 0) {
      factor = atof(v);
    } else if (strcmp(a, "-n") == 0) {
      iters = atoi(v);
    } else if (strcmp(a, "-w") == 0) {
      warmup = atoi(v);
    } else {
      die(rank, "unknown option (expected -b -e -f -n -w --check)", a);
    }
  }
  if (factor <= 1 || min_b == 0 || min_b > max_b || iters < 1 || warmup < 0) {
    die(rank, "need 0 < -b <= -e, -f > 1, -n >= 1, -w >= 0", NULL);
  }

  const size_t es = sizeof(float);
  const size_t max_count = max_b / es > 0 ? max_b / es : 1;
  float* in = malloc(max_count * es + 64);
  float* out = malloc(max_count * es + 64);
  double* times = malloc((size_t)iters * sizeof(double));
  if (in == NULL || out == NULL || times == NULL) die(rank, "out of memory", NULL);
  /* Touch every page of both buffers now, not inside the timed loop. */
  for (size_t i = 0; i < max_count; ++i) {
    in[i] = 1.0f;
    out[i] = 0.0f;
  }

  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int lib_len = 0;
  MPI_Get_library_version(lib, &lib_len);
  /* First line only, and nothing that needs escaping in JSON. */
  for (int i = 0; i < lib_len; ++i) {
    if (lib[i] == '\n' || lib[i] == ',') {
      lib[i] = 0;
      break;
    }
    if (lib[i] == '"' || lib[i] == '\\' || (unsigned char)lib[i] < 0x20) lib[i] = ' ';
  }

  if (rank == 0) {
    printf("{\"op\":\"allreduce\",\"dtype\":\"float32\",\"world_size\":%d,\"reduce_op\":\"sum\","
           "\"algo\":\"mpi\",\"library\":\"%s\",\"results\":[",
           n, lib);
  }
  /* As nccl-tests (and `kiln bench comm`): warm up at the largest size
     first, so the library's own buffers are touched before any timing. */
  for (int i = 0; i < warmup; ++i) {
    MPI_Allreduce(in, out, (int)max_count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  }
  int first = 1, failed = 0;
  for (double bytes_d = (double)min_b; bytes_d <= (double)max_b * 1.0001; bytes_d *= factor) {
    size_t bytes = (size_t)bytes_d;
    size_t count = bytes / es > 0 ? bytes / es : 1;
    size_t reported = count * es;
    for (int i = 0; i < warmup; ++i) {
      MPI_Allreduce(in, out, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
    for (int i = 0; i < iters; ++i) {
      double t0 = MPI_Wtime();
      MPI_Allreduce(in, out, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      times[i] = (MPI_Wtime() - t0) * 1e6;
    }
    qsort(times, (size_t)iters, sizeof(double), cmp_double);
    double median = times[iters / 2]; /* the upper median, as kiln's nth_element */
    double slowest = median;
    MPI_Allreduce(&median, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);

    const char* check_str = "off";
    if (check) {
      for (size_t i = 0; i < count; ++i) in[i] = (float)(rank + 1);
      MPI_Allreduce(in, out, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      const double want = n * (n + 1) / 2.0;
      int bad = 0;
      for (size_t i = 0; i < count; ++i) {
        if (fabs(out[i] - want) > 1e-2 * (want > 1 ? want : 1)) {
          bad = 1;
          break;
        }
      }
      int any_bad = 0;
      MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
      check_str = any_bad ? "fail" : "ok";
      failed |= any_bad;
      for (size_t i = 0; i < count; ++i) in[i] = 1.0f;
    }
    double algbw = (double)reported / (slowest * 1e-6) / 1e9;
    double busbw = algbw * 2.0 * (n - 1) / n;
    if (rank == 0) {
      printf("%s{\"bytes\":%zu,\"count\":%zu,\"time_us\":%.3f,\"algbw_gbps\":%.6f,"
             "\"busbw_gbps\":%.6f,\"check\":\"%s\"}",
             first ? "" : ",", reported, count, slowest, algbw, busbw, check_str);
      fflush(stdout);
    }
    first = 0;
  }
  if (rank == 0) printf("]}\n");
  free(times);
  free(out);
  free(in);
  MPI_Finalize();
  return failed ? 1 : 0;
}
