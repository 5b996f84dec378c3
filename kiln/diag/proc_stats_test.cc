#include "kiln/diag/proc_stats.h"

#include <gtest/gtest.h>

namespace kiln::diag::proc {
namespace {

TEST(ProcStat, CpuTicksSkipACommandNameWithSpacesAndParens) {
  // utime=1500 stime=250 are fields 14 and 15.
  const char* stat =
      "4242 (kiln (rank 1)) R 1 4242 4242 0 -1 4194304 100 0 0 0 1500 250 0 0 20 0 9 0 123 "
      "1000000 500 18446744073709551615\n";
  EXPECT_EQ(cpu_ticks_from_stat(stat), 1750u);
  EXPECT_EQ(cpu_ticks_from_stat("4242 (x) R 1 2"), std::nullopt);
  EXPECT_EQ(cpu_ticks_from_stat("garbage"), std::nullopt);
}

TEST(ProcStatm, ResidentPages) {
  EXPECT_EQ(resident_pages_from_statm("51200 2048 512 10 0 3000 0\n"), 2048u);
  EXPECT_EQ(resident_pages_from_statm("51200"), std::nullopt);
}

TEST(ProcMeminfo, TotalAndAvailableInBytes) {
  const char* text =
      "MemTotal:       16384000 kB\nMemFree:         1000000 kB\n"
      "MemAvailable:    8192000 kB\nBuffers:          100 kB\n";
  auto mi = meminfo(text);
  ASSERT_TRUE(mi);
  EXPECT_EQ(mi->total_bytes, 16384000ull * 1024);
  EXPECT_EQ(mi->available_bytes, 8192000ull * 1024);
  // MemAvailableX must not match MemAvailable; a missing key is no reading.
  EXPECT_EQ(meminfo("MemTotal: 10 kB\nMemAvailableX: 5 kB\n"), std::nullopt);
}

TEST(ProcIo, StorageBytesNotCharCounts) {
  const char* text =
      "rchar: 999999\nwchar: 888888\nsyscr: 10\nsyscw: 20\nread_bytes: 4096\n"
      "write_bytes: 8192\ncancelled_write_bytes: 0\n";
  auto io = io_bytes(text);
  ASSERT_TRUE(io);
  EXPECT_EQ(io->read_bytes, 4096u);
  EXPECT_EQ(io->write_bytes, 8192u);
}

TEST(ProcDiskstats, IoTicksPerDevice) {
  const char* text =
      "   8       0 sda 1000 10 80000 500 2000 20 160000 900 0 1234 1400 0 0 0 0\n"
      "   8       1 sda1 900 10 70000 400 1900 20 150000 800 0 1100 1200\n"
      " 259       0 nvme0n1 5 0 40 1 0 0 0 0 3 77 1\n"
      "short line\n";
  auto t = disk_io_ticks(text);
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(t["sda"], 1234u);
  EXPECT_EQ(t["sda1"], 1100u);
  EXPECT_EQ(t["nvme0n1"], 77u);
}

TEST(ProcNetDev, BytesPerInterface) {
  const char* text =
      "Inter-|   Receive                                                |  Transmit\n"
      " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
      "drop fifo colls carrier compressed\n"
      "    lo: 123456     100    0    0    0     0          0         0   123456     100    0 "
      "   0    0     0       0          0\n"
      "  eth0:1000000000 5000    0    0    0     0          0         0 2000 30    0    0    0  "
      "   0       0          0\n";
  auto n = net_dev(text);
  ASSERT_EQ(n.size(), 2u);
  EXPECT_EQ(n["lo"].rx_bytes, 123456u);
  EXPECT_EQ(n["eth0"].rx_bytes, 1000000000u);  // no space after the colon
  EXPECT_EQ(n["eth0"].tx_bytes, 2000u);
}

TEST(ProcStatHost, IdleIncludesIowait) {
  auto t = host_cpu("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->total, 1000u);
  EXPECT_EQ(t->idle, 850u);
  EXPECT_EQ(host_cpu("cpu0 1 2 3 4 5\n"), std::nullopt);
}

}  // namespace
}  // namespace kiln::diag::proc
