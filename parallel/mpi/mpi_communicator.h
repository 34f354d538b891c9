// MPI backend: moves CPU tensors with Open MPI (or any MPI-3 library).
//
// Key design choice: every op is "checks + one MPI call", and everything around that call
// (argument checks, dtype mapping, watchdog registration, error reporting) lives in one private
// helper, begin(), and one macro, MPI_CHECK, in the .cpp. Each communicator owns a duplicate of
// its MPI_Comm with MPI_ERRORS_RETURN, so condensa traffic never mixes with other libraries'
// and failures come back as CommError naming the call, file:line, rank and host.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/mpi/mpi_include.h"
#include "parallel/watchdog.h"

namespace condensa::parallel {

// Initialises MPI (MPI_Init_thread, asking for MPI_THREAD_MULTIPLE so that the watchdog thread
// may call MPI_Abort) and finalises it when destroyed. If MPI is already initialised, it does
// neither. Works under mpirun and as a singleton (a plain ./binary is a world of one rank).
class MpiRuntime {
 public:
  MpiRuntime();
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // The thread level MPI provided (MPI_THREAD_*).
  int thread_level() const { return thread_level_; }
  bool owns_mpi() const { return owns_; }

 private:
  bool owns_ = false;
  int thread_level_ = 0;
};

class MpiCommunicator : public Communicator {
 public:
  // A duplicate of MPI_COMM_WORLD named "world", with a new watchdog (timeout_s from
  // parallel.timeout_s; 0 disables). MPI must be initialised (see MpiRuntime).
  static std::unique_ptr<MpiCommunicator> world(double timeout_s = kDefaultTimeoutS);

  // Takes ownership of `comm` (freed on destruction). Prefer world() and split().
  MpiCommunicator(MPI_Comm comm, std::string name, std::shared_ptr<Watchdog> watchdog);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend_name() const override { return "mpi"; }
  torch::Device device() const override { return torch::kCPU; }

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

  // Typed split, for backends that bootstrap over MPI (NCCL).
  std::unique_ptr<MpiCommunicator> split_mpi(int color, int key);
  MPI_Comm comm() const { return comm_; }
  const std::shared_ptr<Watchdog>& watchdog() const { return watchdog_; }

 private:
  struct Call;
  // The per-call boilerplate: checks each tensor, maps the dtype, registers `op` with the
  // watchdog for the lifetime of the returned Call.
  Call begin(const char* op, std::initializer_list<const torch::Tensor*> tensors);
  // Throws CommError for rc != MPI_SUCCESS (used through MPI_CHECK).
  void check(int rc, const char* call, const char* file, int line) const;
  // bfloat16/float16 reductions run in float32 (MPI has no 16-bit float types).
  bool reduce_via_float(const torch::Tensor& t) const;

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::shared_ptr<Watchdog> watchdog_;
  std::vector<MPI_Request> send_requests_;  // posted sends, with their tensors kept alive
  std::vector<torch::Tensor> send_tensors_;
  std::vector<int> send_peers_;
};

}  // namespace condensa::parallel
