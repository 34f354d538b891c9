// A communicator for single-process tests of code written against parallel::Communicator.
//
// Key design choice: it stands for rank `rank` of a group of `size` ranks that all pass the same
// inputs as this one, so every collective has a closed-form result computed locally (a sum is
// size * input, a gather repeats the input) and no second process is needed. Every call is
// recorded (op and element count) so tests can check which collectives ran, in which order and
// with which message sizes. Point-to-point, all-to-all and split are not supported.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace condensa::testing {

class ReplicaCommunicator : public parallel::Communicator {
 public:
  struct Call {
    std::string op;     // "all_reduce", "reduce_scatter", "all_gather", "broadcast", "barrier"
    int64_t numel = 0;  // elements of the input
  };

  ReplicaCommunicator(int size, int rank);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend_name() const override { return "replica"; }
  torch::Device device() const override { return torch::kCPU; }

  void all_reduce(torch::Tensor& t, parallel::ReduceOp op = parallel::ReduceOp::kSum) override;
  void reduce_scatter(const torch::Tensor& in,
                      torch::Tensor& out,
                      parallel::ReduceOp op = parallel::ReduceOp::kSum) override;
  void all_gather(const torch::Tensor& in, torch::Tensor& out) override;
  void broadcast(torch::Tensor& t, int root) override;
  void barrier() override;
  void all_to_all(const torch::Tensor& in,
                  const std::vector<int64_t>& send_rows,
                  torch::Tensor& out,
                  const std::vector<int64_t>& recv_rows) override;
  void send(const torch::Tensor& t, int peer) override;
  void recv(torch::Tensor& t, int peer) override;
  void post_send(const torch::Tensor& t, int peer) override;
  void wait_sends() override {}
  std::unique_ptr<parallel::Communicator> split(int color, int key) override;
  std::vector<int> discover_node_map() override;
  torch::Tensor to_device(const torch::Tensor& cpu) const override;
  torch::Tensor to_cpu(const torch::Tensor& t) const override;

  std::vector<Call> calls;

 private:
  int size_, rank_;
};

}  // namespace condensa::testing
