#include "server/engine/common/runtime.h"

#include <sched.h>

#include <thread>

#include <gtest/gtest.h>

namespace compress::engine {
namespace {

TEST(CoresFromCpuQuota, RoundsTheQuotaUpToWholeCores) {
  EXPECT_EQ(CoresFromCpuQuota("200000 100000"), 2);
  EXPECT_EQ(CoresFromCpuQuota("250000 100000\n"), 3);  // 2.5 CPUs: 3 threads
  EXPECT_EQ(CoresFromCpuQuota("50000 100000"), 1);
  EXPECT_EQ(CoresFromCpuQuota("400000 50000"), 8);
}

TEST(CoresFromCpuQuota, NoQuotaOrGarbageIsNone) {
  EXPECT_EQ(CoresFromCpuQuota("max 100000"), std::nullopt);  // cgroup v2, unlimited
  EXPECT_EQ(CoresFromCpuQuota("-1 100000"), std::nullopt);   // cgroup v1, unlimited
  EXPECT_EQ(CoresFromCpuQuota(""), std::nullopt);            // no such file
  EXPECT_EQ(CoresFromCpuQuota("100000"), std::nullopt);
  EXPECT_EQ(CoresFromCpuQuota("100000 0"), std::nullopt);
}

TEST(DefaultIntraOpThreads, SplitsTheCoresBetweenConcurrentJobs) {
  EXPECT_EQ(DefaultIntraOpThreads(8, 1), 8);
  EXPECT_EQ(DefaultIntraOpThreads(8, 2), 4);
  EXPECT_EQ(DefaultIntraOpThreads(8, 3), 2);
  EXPECT_EQ(DefaultIntraOpThreads(2, 4), 1);  // never 0
  EXPECT_EQ(DefaultIntraOpThreads(0, 0), 1);
}

TEST(AvailableCores, IsTheAffinityMaskAtMost) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int cores = AvailableCores();
  EXPECT_GE(cores, 1);
  EXPECT_LE(cores, CPU_COUNT(&set));
  EXPECT_LE(cores, static_cast<int>(std::thread::hardware_concurrency()));
}

TEST(AvailableCores, FollowsANarrowerAffinityMask) {
  cpu_set_t original;
  CPU_ZERO(&original);
  ASSERT_EQ(sched_getaffinity(0, sizeof original, &original), 0);
  int first = 0;
  while (!CPU_ISSET(first, &original)) ++first;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  const int cores = AvailableCores();
  ASSERT_EQ(sched_setaffinity(0, sizeof original, &original), 0);
  EXPECT_EQ(cores, 1);
}

}  // namespace
}  // namespace compress::engine
