// ShardPlan against an element-by-element reference (who owns flat element j?), and the
// gradient collectives against a ReplicaCommunicator that records every call.
#include "parallel/grad_sync.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "common/error.h"
#include "tests/support/replica_communicator.h"

namespace condensa::parallel {
namespace {

using testing::ReplicaCommunicator;

// Reference overlaps of `numels` with [begin, end), by visiting every element of the buffer.
std::vector<ShardOverlap> reference_overlaps(const std::vector<int64_t>& numels,
                                             int64_t begin,
                                             int64_t end) {
  std::map<int64_t, ShardOverlap> by_tensor;
  int64_t j = 0;
  for (int64_t t = 0; t < static_cast<int64_t>(numels.size()); ++t) {
    for (int64_t e = 0; e < numels[t]; ++e, ++j) {
      if (j < begin || j >= end) continue;
      auto it = by_tensor.find(t);
      if (it == by_tensor.end()) {
        by_tensor[t] = {t, e, j - begin, 1};
      } else {
        EXPECT_EQ(it->second.tensor_offset + it->second.size, e) << "not contiguous";
        ++it->second.size;
      }
    }
  }
  std::vector<ShardOverlap> out;
  for (auto& kv : by_tensor) out.push_back(kv.second);
  return out;
}

void expect_same(const std::vector<ShardOverlap>& got, const std::vector<ShardOverlap>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(str("overlap ", i));
    EXPECT_EQ(got[i].tensor, want[i].tensor);
    EXPECT_EQ(got[i].tensor_offset, want[i].tensor_offset);
    EXPECT_EQ(got[i].range_offset, want[i].range_offset);
    EXPECT_EQ(got[i].size, want[i].size);
  }
}

TEST(ShardPlan, StraddlingTensorsSplitAtShardEdges) {
  // Buffer of 12: t0 [0, 5), t1 [5, 8), t2 [8, 12); three shards of 4.
  ShardPlan plan({5, 3, 4}, 3, 1, true);
  EXPECT_EQ(plan.total(), 12);
  EXPECT_EQ(plan.padded(), 12);
  EXPECT_EQ(plan.owned().begin, 4);
  EXPECT_EQ(plan.owned().end, 8);
  expect_same(plan.owned_overlaps(), {{0, 4, 0, 1}, {1, 0, 1, 3}});
  expect_same(plan.overlaps(plan.shard_range(0)), {{0, 0, 0, 4}});
  expect_same(plan.overlaps(plan.shard_range(2)), {{2, 0, 0, 4}});
}

TEST(ShardPlan, PaddingOnlyInTheLastShard) {
  // Buffer of 7 padded to 8; shard 3 = [6, 8) holds t1's last element and one pad element.
  ShardPlan plan({5, 2}, 4, 3, true);
  EXPECT_EQ(plan.padded(), 8);
  expect_same(plan.owned_overlaps(), {{1, 1, 0, 1}});
  // ZeRO-0: the same layout, but the rank owns everything.
  ShardPlan whole({5, 2}, 4, 3, false);
  EXPECT_EQ(whole.padded(), 8);
  EXPECT_EQ(whole.owned().begin, 0);
  EXPECT_EQ(whole.owned().end, 8);
  expect_same(whole.owned_overlaps(), {{0, 0, 0, 5}, {1, 0, 5, 2}});
}

TEST(ShardPlan, MatchesElementwiseReferenceForWorldSizes1To5) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<int64_t> numels(1 + rng() % 6);
    for (auto& n : numels) n = 1 + rng() % 13;
    for (int world = 1; world <= 5; ++world) {
      SCOPED_TRACE(str("trial ", trial, " world ", world));
      std::vector<int64_t> covered(numels.size(), 0);
      int64_t next_begin = 0;
      for (int r = 0; r < world; ++r) {
        ShardPlan plan(numels, world, r, true);
        EXPECT_EQ(plan.padded() % world, 0);
        EXPECT_GE(plan.padded(), plan.total());
        EXPECT_LT(plan.padded() - plan.total(), world);
        EXPECT_EQ(plan.owned().begin, next_begin);  // shards tile the buffer in rank order
        EXPECT_EQ(plan.owned().size(), plan.padded() / world);
        next_begin = plan.owned().end;
        auto got = plan.owned_overlaps();
        expect_same(got, reference_overlaps(numels, plan.owned().begin, plan.owned().end));
        for (const auto& o : got) covered[o.tensor] += o.size;
      }
      EXPECT_EQ(next_begin, ShardPlan(numels, world, 0, true).padded());
      EXPECT_EQ(covered, numels);  // every element in exactly one shard
    }
  }
}

TEST(ShardPlan, ArbitraryRangesAndIntersect) {
  ShardPlan slices({4, 4, 4}, 1, 0, false);  // e.g. a stacked parameter of three experts
  expect_same(slices.overlaps({3, 9}), {{0, 3, 0, 1}, {1, 0, 1, 4}, {2, 0, 5, 1}});
  expect_same(slices.overlaps({4, 8}), {{1, 0, 0, 4}});
  EXPECT_TRUE(slices.overlaps({5, 5}).empty());
  EXPECT_TRUE(intersect({0, 4}, {4, 8}).empty());
  EXPECT_EQ(intersect({0, 4}, {4, 8}).size(), 0);
  EXPECT_EQ(intersect({2, 9}, {4, 6}).begin, 4);
  EXPECT_EQ(intersect({2, 9}, {4, 6}).end, 6);
}

TEST(ShardPlan, RejectsBadShards) {
  EXPECT_THROW(ShardPlan({3}, 0, 0, true), Error);
  EXPECT_THROW(ShardPlan({3}, 2, 2, true), Error);
  EXPECT_THROW(ShardPlan({3}, 2, -1, true), Error);
  EXPECT_THROW(ShardPlan({3}, 2, 0, true).shard_range(5), Error);
}

TEST(GradientBuckets, CoverTheBufferInOrder) {
  EXPECT_TRUE(gradient_buckets(0, 4).empty());
  auto b = gradient_buckets(10, 4);
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0].begin, 0);
  EXPECT_EQ(b[0].end, 4);
  EXPECT_EQ(b[1].begin, 4);
  EXPECT_EQ(b[2].begin, 8);
  EXPECT_EQ(b[2].end, 10);
  EXPECT_EQ(gradient_buckets(8, 4).size(), 2u);
  EXPECT_THROW(gradient_buckets(8, 0), Error);
}

TEST(FlattenPadded, ConcatenatesAndZeroPads) {
  ShardPlan plan({6, 3}, 4, 0, true);  // 9 padded to 12
  auto a = torch::randn({2, 3}), b = torch::randn({3});
  auto flat = flatten_padded({a.reshape({-1}), b}, plan, torch::kCPU);
  ASSERT_EQ(flat.numel(), 12);
  EXPECT_TRUE(torch::equal(flat.narrow(0, 0, 6), a.reshape({-1})));
  EXPECT_TRUE(torch::equal(flat.narrow(0, 6, 3), b));
  EXPECT_TRUE(torch::equal(flat.narrow(0, 9, 3), torch::zeros({3})));
  EXPECT_THROW(flatten_padded({b}, plan, torch::kCPU), Error);
}

TEST(ReduceGradients, Zero0AllReducesInBucketsOfFixedSize) {
  const int64_t n = kGradBucketElements + 1000;  // two buckets, the second partial
  ShardPlan plan({n}, 3, 1, false);
  ASSERT_EQ(plan.padded(), kGradBucketElements + 1001);  // 2^24 + 1000 = 2 (mod 3)
  auto flat = torch::randn({plan.padded()});
  auto expected = flat * 3;
  ReplicaCommunicator comm(3, 1);
  auto out = reduce_gradients(flat, plan, comm);
  EXPECT_TRUE(out.is_same(flat));  // in place
  EXPECT_TRUE(torch::equal(out, expected));
  ASSERT_EQ(comm.calls.size(), 2u);
  EXPECT_EQ(comm.calls[0].op, "all_reduce");
  EXPECT_EQ(comm.calls[0].numel, kGradBucketElements);
  EXPECT_EQ(comm.calls[1].numel, 1001);
}

TEST(ReduceGradients, Zero0OnOneRankCallsNothing) {
  ShardPlan plan({5, 4}, 1, 0, false);
  auto flat = torch::randn({9});
  auto copy = flat.clone();
  ReplicaCommunicator comm(1, 0);
  EXPECT_TRUE(torch::equal(reduce_gradients(flat, plan, comm), copy));
  EXPECT_TRUE(comm.calls.empty());
}

TEST(ReduceGradients, Zero1OnOneRankCallsNothingAndReturnsTheBuffer) {
  ShardPlan plan({5, 4}, 1, 0, true);
  auto flat = torch::randn({9});
  ReplicaCommunicator comm(1, 0);
  auto out = reduce_gradients(flat, plan, comm);
  EXPECT_EQ(out.data_ptr(), flat.data_ptr());  // no copy either
  EXPECT_TRUE(comm.calls.empty());
}

TEST(ReduceGradients, Zero1ReduceScattersIntoTheOwnedShard) {
  ShardPlan plan({7, 6}, 4, 2, true);  // 13 padded to 16, rank 2 owns [8, 12)
  auto flat = torch::randn({16});
  ReplicaCommunicator comm(4, 2);
  auto shard = reduce_gradients(flat, plan, comm);
  ASSERT_EQ(comm.calls.size(), 1u);
  EXPECT_EQ(comm.calls[0].op, "reduce_scatter");
  EXPECT_EQ(comm.calls[0].numel, 16);
  EXPECT_TRUE(torch::equal(shard, flat.narrow(0, 8, 4) * 4));
  EXPECT_THROW(reduce_gradients(torch::randn({13}), plan, comm), Error);
}

TEST(GatherShards, Zero1GathersTheOwnedShardOnly) {
  ShardPlan plan({5, 4}, 3, 1, true);  // 9 = 3 shards of 3; rank 1 owns [3, 6)
  auto flat = torch::randn({9});
  auto own = flat.narrow(0, 3, 3).clone();
  ReplicaCommunicator comm(3, 1);
  gather_shards(flat, plan, comm);
  ASSERT_EQ(comm.calls.size(), 1u);
  EXPECT_EQ(comm.calls[0].op, "all_gather");
  EXPECT_EQ(comm.calls[0].numel, 3);
  // Every rank of a replica group holds the same shard, so each slot is this rank's shard.
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(torch::equal(flat.narrow(0, 3 * r, 3), own));

  ReplicaCommunicator comm0(3, 1);
  ShardPlan whole({5, 4}, 3, 1, false);
  auto before = flat.clone();
  gather_shards(flat, whole, comm0);
  EXPECT_TRUE(comm0.calls.empty());
  EXPECT_TRUE(torch::equal(flat, before));
}

TEST(SumOwnedPartials, OnlyShardedPlansSumOverTheGroup) {
  auto sq = torch::tensor({2.5}, torch::kFloat64);
  ReplicaCommunicator comm(4, 0);
  sum_owned_partials(sq, ShardPlan({8}, 4, 0, false), comm);
  EXPECT_EQ(sq.item<double>(), 2.5);
  EXPECT_TRUE(comm.calls.empty());
  sum_owned_partials(sq, ShardPlan({8}, 4, 0, true), comm);
  EXPECT_EQ(sq.item<double>(), 10.0);
  ASSERT_EQ(comm.calls.size(), 1u);
  EXPECT_EQ(comm.calls[0].op, "all_reduce");
}

}  // namespace
}  // namespace condensa::parallel
