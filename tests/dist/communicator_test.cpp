// Communicator contract, run against every backend (MPI here; NCCL where every rank has a GPU).
//
// Expected values are closed-form or computed from every rank's seeded inputs by a plain loop
// in float64 on the CPU; integer-valued inputs keep them exact in every dtype.
#include <gtest/gtest.h>

#include <chrono>
#include <sstream>
#include <thread>
#include <tuple>

#include "common/error.h"
#include "parallel/bench_alltoall.h"
#include "tests/dist/dist_env.h"

namespace condensa::testing {
namespace {

using parallel::Communicator;
using parallel::ReduceOp;

const std::vector<torch::ScalarType> kDtypes = {torch::kFloat32, torch::kFloat64, torch::kBFloat16,
                                                torch::kFloat16, torch::kInt64,   torch::kInt32,
                                                torch::kUInt8};

// Runs `fn` and returns the CommError message ("" if nothing was thrown).
template <class F>
std::string comm_error(F&& fn) {
  try {
    fn();
  } catch (const CommError& e) {
    return e.what();
  }
  return "";
}

// Reference reduction over the CPU inputs of all ranks, in float64.
torch::Tensor reduce_reference(const std::vector<torch::Tensor>& inputs, ReduceOp op) {
  torch::Tensor acc = inputs[0].to(torch::kFloat64);
  for (size_t r = 1; r < inputs.size(); ++r) {
    const torch::Tensor x = inputs[r].to(torch::kFloat64);
    if (op == ReduceOp::kMax) {
      acc = torch::maximum(acc, x);
    } else if (op == ReduceOp::kMin) {
      acc = torch::minimum(acc, x);
    } else {
      acc = acc + x;
    }
  }
  if (op == ReduceOp::kAvg) acc = acc / static_cast<double>(inputs.size());
  return acc;
}

// Exact comparison through float64 (every expected value is exact in the dtype).
void expect_equal(const torch::Tensor& got_cpu, const torch::Tensor& expected) {
  ASSERT_EQ(got_cpu.sizes(), expected.sizes());
  const torch::Tensor want = expected.to(got_cpu.scalar_type()).to(torch::kFloat64);
  const torch::Tensor got = got_cpu.to(torch::kFloat64);
  EXPECT_TRUE(torch::equal(got, want)) << "got\n" << got << "\nexpected\n" << want;
}

// The backends the contract suites are instantiated with: "mpi", plus "nccl" only where every
// rank can run it (decided once, collectively, when gtest registers the tests; main() sets up
// the MPI world before that). Without a CUDA device the NCCL cases are not registered at all,
// so they cannot show as passed; main() prints one line saying they were not run, and how many.
std::vector<std::string> contract_backends() {
  static const std::vector<std::string> backends = [] {
    std::vector<std::string> out{"mpi"};
    std::string reason;
    if (backend_world("nccl", &reason)) out.push_back("nccl");
    return out;
  }();
  return backends;
}

class BackendTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string skip;
    comm_ = backend_world(GetParam(), &skip);
    if (!comm_) GTEST_SKIP() << skip;
  }
  Communicator& comm() { return *comm_; }
  Communicator* comm_ = nullptr;
};

class DtypeTest : public ::testing::TestWithParam<std::tuple<std::string, torch::ScalarType>> {
 protected:
  void SetUp() override {
    std::string skip;
    comm_ = backend_world(std::get<0>(GetParam()), &skip);
    if (!comm_) GTEST_SKIP() << skip;
  }
  Communicator& comm() { return *comm_; }
  torch::ScalarType dtype() const { return std::get<1>(GetParam()); }
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }
  std::vector<torch::Tensor> inputs(uint64_t tag, torch::IntArrayRef shape) const {
    std::vector<torch::Tensor> all;
    for (int r = 0; r < size(); ++r) all.push_back(seeded_ints(tag, r, shape, dtype()));
    return all;
  }
  Communicator* comm_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Every op, every dtype

TEST_P(DtypeTest, AllReduceSumMaxMinAvg) {
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
    if (op == ReduceOp::kAvg && !torch::isFloatingType(dtype())) continue;
    SCOPED_TRACE(parallel::reduce_op_name(op));
    const auto all = inputs(11 + static_cast<int>(op), {5, 3});
    torch::Tensor t = comm().to_device(all[rank()]);
    comm().all_reduce(t, op);
    expect_equal(comm().to_cpu(t), reduce_reference(all, op));
  }
}

TEST_P(DtypeTest, ReduceScatterSumAndMax) {
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
    SCOPED_TRACE(parallel::reduce_op_name(op));
    const auto all = inputs(21 + static_cast<int>(op), {size() * 2, 3});
    torch::Tensor out = comm().to_device(torch::zeros({2, 3}, dtype()));
    comm().reduce_scatter(comm().to_device(all[rank()]), out, op);
    expect_equal(comm().to_cpu(out),
                 reduce_reference(all, op).slice(0, rank() * 2, rank() * 2 + 2));
  }
}

TEST_P(DtypeTest, AllGatherIsRankMajor) {
  const auto all = inputs(31, {2, 3});
  torch::Tensor out = comm().to_device(torch::zeros({size() * 2, 3}, dtype()));
  comm().all_gather(comm().to_device(all[rank()]), out);
  expect_equal(comm().to_cpu(out), torch::cat(all, 0));
}

TEST_P(DtypeTest, BroadcastFromLastRank) {
  const int root = size() - 1;
  const auto all = inputs(41, {3, 4});
  torch::Tensor t = comm().to_device(all[rank()]);
  comm().broadcast(t, root);
  expect_equal(comm().to_cpu(t), all[root]);
}

// Row k of the block rank `src` sends to rank `dst`: (src * 64 + dst * 16 + k, ... + 1).
torch::Tensor block(int src, int dst, int64_t rows, torch::ScalarType dtype) {
  torch::Tensor first = src * 64 + dst * 16 + torch::arange(rows, torch::kInt64);
  return torch::stack({first, first + 1}, 1).to(dtype);
}

TEST_P(DtypeTest, AllToAllUnevenAndZeroSplits) {
  // Rank i sends (i + 2j) % 3 rows to rank j: 0, 1 and 2 rows all occur, including to itself.
  auto rows = [](int src, int dst) -> int64_t { return (src + 2 * dst) % 3; };
  std::vector<int64_t> send_rows, recv_rows;
  std::vector<torch::Tensor> send_blocks, expected_blocks;
  for (int j = 0; j < size(); ++j) {
    send_rows.push_back(rows(rank(), j));
    recv_rows.push_back(rows(j, rank()));
    send_blocks.push_back(block(rank(), j, send_rows.back(), dtype()));
    expected_blocks.push_back(block(j, rank(), recv_rows.back(), dtype()));
  }
  const torch::Tensor expected = torch::cat(expected_blocks, 0);
  torch::Tensor out = comm().to_device(torch::zeros({expected.size(0), 2}, dtype()));
  comm().all_to_all(comm().to_device(torch::cat(send_blocks, 0)), send_rows, out, recv_rows);
  expect_equal(comm().to_cpu(out), expected);
}

TEST_P(DtypeTest, AllToAllEverythingToRankZero) {
  std::vector<int64_t> send_rows(size(), 0), recv_rows(size(), 0);
  send_rows[0] = 2;
  if (rank() == 0) recv_rows.assign(size(), 2);
  std::vector<torch::Tensor> expected_blocks;
  for (int j = 0; j < size(); ++j) expected_blocks.push_back(block(j, 0, recv_rows[j], dtype()));
  const torch::Tensor expected = torch::cat(expected_blocks, 0);
  torch::Tensor out = comm().to_device(torch::zeros({expected.size(0), 2}, dtype()));
  comm().all_to_all(comm().to_device(block(rank(), 0, 2, dtype())), send_rows, out, recv_rows);
  expect_equal(comm().to_cpu(out), expected);
}

TEST_P(DtypeTest, AllToAllAllZero) {
  const std::vector<int64_t> zeros(size(), 0);
  torch::Tensor out = comm().to_device(torch::empty({0, 4}, dtype()));
  comm().all_to_all(comm().to_device(torch::empty({0, 4}, dtype())), zeros, out, zeros);
  EXPECT_EQ(comm().to_cpu(out).sizes(), torch::IntArrayRef({0, 4}));
}

TEST_P(DtypeTest, SendRecvRing) {
  const int next = (rank() + 1) % size(), prev = (rank() + size() - 1) % size();
  const auto all = inputs(51, {4, 2});
  torch::Tensor got = comm().to_device(torch::zeros({4, 2}, dtype()));
  const torch::Tensor mine = comm().to_device(all[rank()]);
  // Even ranks send first, odd ranks receive first: no cycle of blocked senders.
  if (rank() % 2 == 0) {
    comm().send(mine, next);
    comm().recv(got, prev);
  } else {
    comm().recv(got, prev);
    comm().send(mine, next);
  }
  expect_equal(comm().to_cpu(got), all[prev]);
}

TEST_P(DtypeTest, PostedSendsArriveInOrderWhateverEachRankDoesFirst) {
  // Every rank posts two sends to the next rank before receiving anything: posting never
  // waits, the receives match in posting order, and wait_sends returns once both arrived.
  const int next = (rank() + 1) % size(), prev = (rank() + size() - 1) % size();
  const auto all = inputs(53, {2, 3});
  const torch::Tensor first = comm().to_device(all[rank()]);
  const torch::Tensor second = comm().to_device(all[rank()] * 2);
  comm().post_send(first, next);
  comm().post_send(second, next);
  torch::Tensor a = comm().to_device(torch::zeros({2, 3}, dtype()));
  torch::Tensor b = comm().to_device(torch::zeros({2, 3}, dtype()));
  comm().recv(a, prev);
  comm().recv(b, prev);
  comm().wait_sends();
  expect_equal(comm().to_cpu(a), all[prev]);
  expect_equal(comm().to_cpu(b), all[prev] * 2);
}

std::string dtype_test_name(
    const ::testing::TestParamInfo<std::tuple<std::string, torch::ScalarType>>& info) {
  return std::get<0>(info.param) + "_" + c10::toString(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Backends,
                         DtypeTest,
                         ::testing::Combine(::testing::ValuesIn(contract_backends()),
                                            ::testing::ValuesIn(kDtypes)),
                         dtype_test_name);

// ---------------------------------------------------------------------------------------------
// Per backend

TEST_P(BackendTest, AllReduceRandomFloatsWithinTolerance) {
  std::vector<torch::Tensor> all;
  for (int r = 0; r < comm().size(); ++r) all.push_back(seeded_normal(61, r, {64}));
  torch::Tensor t = comm().to_device(all[comm().rank()].to(torch::kFloat32));
  comm().all_reduce(t);
  const torch::Tensor want = reduce_reference(all, ReduceOp::kSum);
  EXPECT_TRUE(torch::allclose(comm().to_cpu(t).to(torch::kFloat64), want, 1e-5, 1e-5));
}

// Event-based, so a loaded machine cannot make it fail: rank 0 arrives kLateS late and notes
// the wall-clock time it entered the barrier; every rank notes when it left. Leaving cannot
// precede rank 0's entry (same host: the same clock; across hosts: up to kClockSkewS of skew).
// A barrier that does not wait lets the others leave about kLateS before rank 0 enters.
TEST_P(BackendTest, BarrierWaitsForTheLastRank) {
  constexpr double kLateS = 0.3, kClockSkewS = 0.05;
  auto now_us = [] {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  comm().barrier();
  int64_t entered_us = 0;
  if (comm().rank() == 0) {
    std::this_thread::sleep_for(std::chrono::duration<double>(kLateS));
    entered_us = now_us();
  }
  comm().barrier();
  const int64_t left_us = now_us();
  const std::vector<int64_t> entered = mpi_world().all_gather_int64({entered_us});
  EXPECT_GE(static_cast<double>(left_us - entered[0]), -kClockSkewS * 1e6)
      << "rank " << comm().rank() << " left the barrier " << (entered[0] - left_us) / 1e3
      << " ms before rank 0 entered it";
}

TEST_P(BackendTest, SplitByParityWithReversedKeys) {
  const int r = comm().rank(), n = comm().size();
  std::unique_ptr<Communicator> sub = comm().split(r % 2, -r);
  ASSERT_NE(sub, nullptr);
  // Members: ranks with my parity; key -r orders them from the highest rank down.
  std::vector<int64_t> members;
  for (int j = n - 1; j >= 0; --j) {
    if (j % 2 == r % 2) members.push_back(j);
  }
  EXPECT_EQ(sub->size(), static_cast<int>(members.size()));
  EXPECT_EQ(members[sub->rank()], r);
  EXPECT_EQ(sub->name(), str(comm().name(), "/", r % 2));
  EXPECT_EQ(sub->backend_name(), comm().backend_name());
  EXPECT_EQ(sub->all_gather_int64({r}), members);
  torch::Tensor t = sub->to_device(torch::full({2}, static_cast<int64_t>(r), torch::kInt64));
  sub->all_reduce(t);
  int64_t sum = 0;
  for (int64_t m : members) sum += m;
  EXPECT_EQ(sub->to_cpu(t)[1].item<int64_t>(), sum);
}

TEST_P(BackendTest, SplitWithNegativeColorLeavesRankOut) {
  std::unique_ptr<Communicator> sub = comm().split(comm().rank() == 0 ? -1 : 7, 0);
  if (comm().rank() == 0) {
    EXPECT_EQ(sub, nullptr);
    return;
  }
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->size(), comm().size() - 1);
  EXPECT_EQ(sub->rank(), comm().rank() - 1);
}

TEST_P(BackendTest, AllGatherInt64AndString) {
  const int r = comm().rank();
  const std::vector<int64_t> got = comm().all_gather_int64({r, -r * 1000000000000LL});
  std::vector<int64_t> want;
  for (int j = 0; j < comm().size(); ++j) {
    want.push_back(j);
    want.push_back(-j * 1000000000000LL);
  }
  EXPECT_EQ(got, want);
  // Lengths differ, rank 0's is empty.
  const std::vector<std::string> texts = comm().all_gather_string(std::string(r * 3, 'a' + r));
  ASSERT_EQ(static_cast<int>(texts.size()), comm().size());
  for (int j = 0; j < comm().size(); ++j) EXPECT_EQ(texts[j], std::string(j * 3, 'a' + j));
}

TEST_P(BackendTest, AllGatherInt64LengthMismatchFailsOnEveryRank) {
  const std::string message =
      comm_error([&] { comm().all_gather_int64(std::vector<int64_t>(comm().rank() + 1, 5)); });
  EXPECT_NE(message.find("all_gather_int64 on world: rank "), std::string::npos) << message;
  EXPECT_NE(message.find("every rank must pass the same number"), std::string::npos) << message;
}

TEST_P(BackendTest, UnsupportedDtypeAndAvgOnIntegersAreRejected) {
  const std::string name = comm().backend_name();
  torch::Tensor flags = comm().to_device(torch::ones({3}, torch::kBool));
  EXPECT_NE(comm_error([&] {
              comm().all_reduce(flags);
            }).find(str("Communicator ", name, " does not support dtype Bool in all_reduce")),
            std::string::npos);
  torch::Tensor ints = comm().to_device(torch::ones({3}, torch::kInt32));
  EXPECT_NE(comm_error([&] {
              comm().all_reduce(ints, ReduceOp::kAvg);
            }).find(str("Communicator ", name, " does not support all_reduce(avg) on dtype Int")),
            std::string::npos);
}

TEST_P(BackendTest, BadShapesAreRejectedBeforeCommunicating) {
  torch::Tensor in = comm().to_device(torch::ones({2, 3}));
  torch::Tensor out = comm().to_device(torch::ones({2 * comm().size() + 1, 3}));
  EXPECT_NE(comm_error([&] { comm().all_gather(in, out); }).find("all_gather: output"),
            std::string::npos);
  const std::vector<int64_t> rows(comm().size(), 1);
  EXPECT_NE(comm_error([&] {
              comm().all_to_all(in, rows, out, rows);
            }).find("all_to_all: send_rows sum to"),
            std::string::npos);
  EXPECT_NE(comm_error([&] { comm().send(in, comm().rank()); }).find("must be another rank"),
            std::string::npos);
}

TEST_P(BackendTest, NonContiguousTensorIsRejected) {
  if (comm().backend_name() != "mpi") GTEST_SKIP() << "needs a CPU view op (CPU-only LibTorch)";
  torch::Tensor t = torch::ones({4, 3}).t();
  EXPECT_NE(comm_error([&] { comm().all_reduce(t); }).find("must be contiguous"),
            std::string::npos);
}

TEST_P(BackendTest, NodeMapGroupsRanksByHost) {
  const std::vector<int> nodes = comm().discover_node_map();
  const std::vector<std::string> hosts = comm().all_gather_string(parallel::this_host_name());
  ASSERT_EQ(static_cast<int>(nodes.size()), comm().size());
  EXPECT_EQ(nodes[0], 0);
  for (int i = 0; i < comm().size(); ++i) {
    for (int j = 0; j < comm().size(); ++j) EXPECT_EQ(nodes[i] == nodes[j], hosts[i] == hosts[j]);
  }
}

TEST_P(BackendTest, AllToAllBenchVerifiesItsData) {
  parallel::AllToAllBenchOptions options;
  options.min_bytes = 64;
  options.max_bytes = 4096;
  options.iters = 2;
  options.warmup = 1;
  options.dtype = torch::kBFloat16;
  std::ostringstream table;
  options.out = &table;
  EXPECT_EQ(parallel::run_alltoall_bench(comm(), options), 0);
  if (comm().rank() == 0) {
    const std::string text = table.str();
    EXPECT_NE(text.find("busbw (GB/s)"), std::string::npos) << text;
    EXPECT_NE(text.find("#wrong"), std::string::npos) << text;
    EXPECT_NE(text.find("Out of bounds values : 0 OK"), std::string::npos) << text;
    // One row per size: 64, 128, ..., 4096 bytes.
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2 + 7 + 2) << text;
  } else {
    EXPECT_TRUE(table.str().empty());
  }
}

INSTANTIATE_TEST_SUITE_P(Backends,
                         BackendTest,
                         ::testing::ValuesIn(contract_backends()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace condensa::testing
