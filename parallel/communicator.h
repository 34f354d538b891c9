// Communicator: the one interface through which condensa moves tensors between ranks.
//
// Key design choice: a small, synchronous, c10d-style interface with one contract that every
// backend passes (MPI moves CPU tensors, NCCL moves CUDA tensors). Backends share the argument
// checks defined here and one private per-call helper each, so that an op reads as "check,
// one library call". Everything above this layer (mesh, token dispatchers, gradient sync) is
// written against this class only.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace condensa::parallel {

enum class ReduceOp { kSum, kMax, kMin, kAvg };

// "sum", "max", "min", "avg".
const char* reduce_op_name(ReduceOp op);

// A group of ranks that exchange tensors.
//
// Contract (every backend, every op):
//  * Every rank of the communicator calls the same collectives, with the same op, dtype and
//    (where the op says so) the same shapes, in the same order. A rank that skips or reorders a
//    collective hangs the others; the watchdog (parallel/watchdog.h) aborts such a job.
//  * Tensors are contiguous, have one of the supported dtypes (float32, float64, bfloat16,
//    float16, int64, int32, uint8) and live on device(): the CPU for "mpi", this rank's CUDA
//    device for "nccl". Violations throw condensa::CommError before any rank communicates, so
//    a check that fails on every rank fails everywhere without hanging.
//  * Ops are synchronous from the caller's view: when a call returns, its output may be read
//    (NCCL: by the host and by work later queued on the compute stream).
//  * Outputs are written in place into tensors the caller allocated with the documented shape.
//  * Reductions follow the backend's order and rounding: MPI reduces bfloat16/float16 in float32
//    and rounds once; NCCL may round after each step. Compare with per-dtype tolerances, or use
//    values that are exact in the dtype. kAvg needs a floating dtype.
//  * An op or dtype a backend cannot do throws "Communicator <name> does not support <op>".
//  * Communicators are not thread-safe: one thread issues a communicator's collectives.
class Communicator {
 public:
  explicit Communicator(std::string name) : name_(std::move(name)) {}
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "mpi" or "nccl".
  virtual std::string backend_name() const = 0;
  // Device that tensors passed to this communicator must live on.
  virtual torch::Device device() const = 0;
  // Label used in error and watchdog messages ("world", "dp", "ep", ...).
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  // t = op over ranks of t, in place.
  virtual void all_reduce(torch::Tensor& t, ReduceOp op = ReduceOp::kSum) = 0;
  // in: [size() * n, ...]; out: [n, ...] = op over ranks of in[rank() * n : (rank() + 1) * n].
  virtual void reduce_scatter(const torch::Tensor& in,
                              torch::Tensor& out,
                              ReduceOp op = ReduceOp::kSum) = 0;
  // in: [n, ...] (same shape on every rank); out: [size() * n, ...], rank-major.
  virtual void all_gather(const torch::Tensor& in, torch::Tensor& out) = 0;
  // t = root's t on every rank (same shape everywhere).
  virtual void broadcast(torch::Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // Variable all-to-all over dim 0. in: [sum(send_rows), ...]; the first send_rows[0] rows go to
  // rank 0, the next send_rows[1] to rank 1, ... out: [sum(recv_rows), ...], filled rank-major
  // with recv_rows[j] rows from rank j. Both vectors have size() entries; zeros are legal; the
  // caller guarantees recv_rows[j] on rank i == send_rows[i] on rank j (the expert-parallel
  // dispatcher first sends the counts themselves with an all_to_all of one row per rank).
  // Trailing dims and dtype match on all ranks.
  virtual void all_to_all(const torch::Tensor& in,
                          const std::vector<int64_t>& send_rows,
                          torch::Tensor& out,
                          const std::vector<int64_t>& recv_rows) = 0;
  // Point to point; the receiver's t has the sender's shape and dtype. peer != rank().
  virtual void send(const torch::Tensor& t, int peer) = 0;
  virtual void recv(torch::Tensor& t, int peer) = 0;
  // Asynchronous send (pipeline stages): starts sending t to peer and returns at once; t must
  // stay unchanged until wait_sends() returns. Sends to one peer are received in the order they
  // were posted (no tags). The watchdog covers the wait.
  virtual void post_send(const torch::Tensor& t, int peer) = 0;
  // Waits until every posted send has been received.
  virtual void wait_sends() = 0;
  // Collective over this communicator: ranks with the same color form a new communicator,
  // ordered by (key, old rank). A negative color means "in no group" and returns nullptr.
  // The child is named "<name>/<color>" and shares this communicator's watchdog.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // For every rank, a node index: ranks that share memory (one machine) share an index.
  // Indices are dense, numbered in order of each node's lowest rank. Collective.
  virtual std::vector<int> discover_node_map() = 0;

  // Staging helpers for small control data and tests (not the hot path): a contiguous copy of a
  // CPU tensor on device(), and a contiguous CPU copy of a tensor on device(). Never aliases.
  virtual torch::Tensor to_device(const torch::Tensor& cpu) const = 0;
  virtual torch::Tensor to_cpu(const torch::Tensor& t) const = 0;

  // Gathers every rank's values: result[j * n + i] = values[i] on rank j, with n the (common)
  // length. Ranks passing different lengths get CommError on every rank. Collective.
  std::vector<int64_t> all_gather_int64(const std::vector<int64_t>& values);
  // result[j] = text on rank j (lengths may differ). Collective.
  std::vector<std::string> all_gather_string(const std::string& text);

 protected:
  // Shared argument checks; each throws CommError naming this communicator and `op`.
  void check_tensor(const char* op, const torch::Tensor& t) const;
  void check_same_dtype(const char* op, const torch::Tensor& a, const torch::Tensor& b) const;
  void check_reduce(const char* op, ReduceOp reduce, const torch::Tensor& t) const;
  void check_peer(const char* op, int peer) const;
  // "rank 1 of world (4 ranks, mpi)", for messages.
  std::string where() const;

 private:
  std::string name_;
};

// True for the dtypes every backend supports.
bool is_supported_dtype(torch::ScalarType dtype);

}  // namespace condensa::parallel
