// NCCL backend: moves CUDA tensors with NCCL (built only when CUDA and NCCL are found).
//
// Key design choice: NCCL runs on its own stream, ordered against the caller's compute stream
// with events (compute -> NCCL before each op, NCCL -> compute after it), and bootstraps over an
// MPI communicator that it keeps: the ncclUniqueId is made on rank 0 and broadcast over MPI,
// split() splits the MPI communicator and builds a new NCCL communicator on each part, and the
// node map comes from MPI. As in the MPI backend, one private helper (begin()) carries the
// per-call boilerplate and NCCL_CHECK / CUDA_CHECK carry call text, file:line, the library's
// error string, rank and host.
//
// The LibTorch this project builds against may be CPU-only, so this file uses the CUDA runtime
// directly (no ATen CUDA headers): the compute stream is the legacy default stream unless one is
// passed in, and to_device()/to_cpu() stage with cudaMemcpy.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/mpi/mpi_communicator.h"

namespace condensa::parallel {

struct NcclOptions {
  // CUDA device of this rank; -1 = (rank within its node) % number of visible devices.
  int device = -1;
  // Stream the caller computes on; nullptr = the legacy default stream.
  cudaStream_t compute_stream = nullptr;
  // true: each op returns once its data has arrived (the host polls an event under the
  // watchdog, so hung NCCL ops are aborted too). false: ops only enqueue work, ordered before
  // later work on compute_stream; the watchdog then only covers the enqueue.
  bool blocking = true;
};

class NcclCommunicator : public Communicator {
 public:
  // Collective over `bootstrap`, which it keeps (for split() and the node map).
  NcclCommunicator(std::unique_ptr<MpiCommunicator> bootstrap, const NcclOptions& options);
  ~NcclCommunicator() override;

  // A world NCCL communicator over a duplicate of `world` (collective over world).
  static std::unique_ptr<NcclCommunicator> create(MpiCommunicator& world,
                                                  const NcclOptions& options = {});
  // Number of visible CUDA devices (0 when there is no driver or device; never throws).
  static int num_visible_devices();

  int rank() const override { return bootstrap_->rank(); }
  int size() const override { return bootstrap_->size(); }
  std::string backend_name() const override { return "nccl"; }
  torch::Device device() const override;

  void all_reduce(torch::Tensor& t, ReduceOp op = ReduceOp::kSum) override;
  void reduce_scatter(const torch::Tensor& in,
                      torch::Tensor& out,
                      ReduceOp op = ReduceOp::kSum) override;
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
  void wait_sends() override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  std::vector<int> discover_node_map() override;
  torch::Tensor to_device(const torch::Tensor& cpu) const override;
  torch::Tensor to_cpu(const torch::Tensor& t) const override;

  cudaStream_t stream() const { return stream_; }

 private:
  class Call;
  // The per-call boilerplate: checks each tensor, maps the dtype, makes the NCCL stream wait for
  // the compute stream and registers `op` with the watchdog; Call::finish() orders the compute
  // stream after the op and, when blocking, waits for it.
  Call begin(const char* op, std::initializer_list<const torch::Tensor*> tensors);
  void finish(Call& call);
  void check_nccl(ncclResult_t rc, const char* call, const char* file, int line) const;
  void check_cuda(cudaError_t rc, const char* call, const char* file, int line) const;

  std::unique_ptr<MpiCommunicator> bootstrap_;
  NcclOptions options_;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;  // compute stream -> NCCL stream
  cudaEvent_t done_ = nullptr;   // NCCL stream -> compute stream
  void* scratch_ = nullptr;      // one float, for barrier()
};

}  // namespace condensa::parallel
