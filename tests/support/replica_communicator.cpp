#include "tests/support/replica_communicator.h"

#include "common/error.h"

namespace condensa::testing {

using parallel::ReduceOp;

ReplicaCommunicator::ReplicaCommunicator(int size, int rank)
    : parallel::Communicator("replica"), size_(size), rank_(rank) {
  CONDENSA_CHECK(size >= 1 && rank >= 0 && rank < size, Error, "ReplicaCommunicator: rank ", rank,
                 " of ", size);
}

void ReplicaCommunicator::all_reduce(torch::Tensor& t, ReduceOp op) {
  check_tensor("all_reduce", t);
  check_reduce("all_reduce", op, t);
  calls.push_back({"all_reduce", t.numel()});
  if (op == ReduceOp::kSum) t.mul_(size_);  // max, min and avg of equal values are the value
}

void ReplicaCommunicator::reduce_scatter(const torch::Tensor& in, torch::Tensor& out, ReduceOp op) {
  check_tensor("reduce_scatter", in);
  check_tensor("reduce_scatter", out);
  check_reduce("reduce_scatter", op, in);
  check_same_dtype("reduce_scatter", in, out);
  CONDENSA_CHECK(in.size(0) == size_ * out.size(0), CommError, "reduce_scatter: in has ",
                 in.size(0), " rows, out ", out.size(0), ", size ", size_);
  calls.push_back({"reduce_scatter", in.numel()});
  out.copy_(in.narrow(0, rank_ * out.size(0), out.size(0)));
  if (op == ReduceOp::kSum) out.mul_(size_);
}

void ReplicaCommunicator::all_gather(const torch::Tensor& in, torch::Tensor& out) {
  check_tensor("all_gather", in);
  check_tensor("all_gather", out);
  check_same_dtype("all_gather", in, out);
  CONDENSA_CHECK(out.size(0) == size_ * in.size(0), CommError, "all_gather: in has ", in.size(0),
                 " rows, out ", out.size(0), ", size ", size_);
  calls.push_back({"all_gather", in.numel()});
  for (int r = 0; r < size_; ++r) out.narrow(0, r * in.size(0), in.size(0)).copy_(in);
}

void ReplicaCommunicator::broadcast(torch::Tensor& t, int root) {
  check_tensor("broadcast", t);
  calls.push_back({"broadcast", t.numel()});
}

void ReplicaCommunicator::barrier() { calls.push_back({"barrier", 0}); }

void ReplicaCommunicator::all_to_all(const torch::Tensor&,
                                     const std::vector<int64_t>&,
                                     torch::Tensor&,
                                     const std::vector<int64_t>&) {
  throw CommError("Communicator replica does not support all_to_all");
}

void ReplicaCommunicator::send(const torch::Tensor&, int) {
  throw CommError("Communicator replica does not support send");
}

void ReplicaCommunicator::recv(torch::Tensor&, int) {
  throw CommError("Communicator replica does not support recv");
}

void ReplicaCommunicator::post_send(const torch::Tensor&, int) {
  throw CommError("Communicator replica does not support post_send");
}

std::unique_ptr<parallel::Communicator> ReplicaCommunicator::split(int, int) {
  throw CommError("Communicator replica does not support split");
}

std::vector<int> ReplicaCommunicator::discover_node_map() { return std::vector<int>(size_, 0); }

torch::Tensor ReplicaCommunicator::to_device(const torch::Tensor& cpu) const {
  return cpu.to(torch::kCPU).clone(torch::MemoryFormat::Contiguous);
}

torch::Tensor ReplicaCommunicator::to_cpu(const torch::Tensor& t) const {
  return t.to(torch::kCPU).clone(torch::MemoryFormat::Contiguous);
}

}  // namespace condensa::testing
