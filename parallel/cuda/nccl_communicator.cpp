// NCCL backend: see nccl_communicator.h.
#include "parallel/cuda/nccl_communicator.h"

#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/error.h"

// NCCL_CHECK / CUDA_CHECK(call): run a call on this communicator and throw CommError with the
// call text, file:line, the library's error string, rank and host when it fails.
#define NCCL_CHECK(call) check_nccl((call), #call, __FILE__, __LINE__)
#define CUDA_CHECK(call) check_cuda((call), #call, __FILE__, __LINE__)

namespace condensa::parallel {

namespace {

ncclDataType_t nccl_type(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return ncclFloat32;
    case torch::kFloat64:
      return ncclFloat64;
    case torch::kBFloat16:
      return ncclBfloat16;
    case torch::kFloat16:
      return ncclFloat16;
    case torch::kInt64:
      return ncclInt64;
    case torch::kInt32:
      return ncclInt32;
    case torch::kUInt8:
    default:  // check_tensor rejected every other dtype
      return ncclUint8;
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kAvg:
      return ncclAvg;
  }
  return ncclSum;
}

int64_t row_numel(const torch::Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

char* bytes_at(const torch::Tensor& t, int64_t element_offset) {
  return static_cast<char*>(t.data_ptr()) + element_offset * t.element_size();
}

}  // namespace

class NcclCommunicator::Call {
 public:
  ncclDataType_t type = ncclFloat32;
  Watchdog::Guard guard;
};

int NcclCommunicator::num_visible_devices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return n;
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(MpiCommunicator& world,
                                                           const NcclOptions& options) {
  return std::make_unique<NcclCommunicator>(world.split_mpi(0, world.rank()), options);
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<MpiCommunicator> bootstrap,
                                   const NcclOptions& options)
    : Communicator(bootstrap ? bootstrap->name() : "nccl"),
      bootstrap_(std::move(bootstrap)),
      options_(options) {
  CONDENSA_CHECK(bootstrap_ != nullptr, CommError, "NcclCommunicator: null bootstrap communicator");
  // 1. Device: explicit, or this rank's index within its node modulo the visible devices.
  const int num_devices = num_visible_devices();
  const std::vector<int> nodes = bootstrap_->discover_node_map();
  CONDENSA_CHECK(num_devices > 0, CommError, "NcclCommunicator: no CUDA device visible on host ",
                 this_host_name(), " (", where(), ")");
  if (options_.device >= 0) {
    device_ = options_.device;
  } else {
    const int local_rank =
        static_cast<int>(std::count(nodes.begin(), nodes.begin() + rank(), nodes[rank()]));
    device_ = local_rank % num_devices;
  }
  CUDA_CHECK(cudaSetDevice(device_));

  // 2. Unique id from rank 0, over MPI.
  ncclUniqueId id;
  torch::Tensor id_bytes = torch::zeros({static_cast<int64_t>(sizeof(id))}, torch::kUInt8);
  if (rank() == 0) {
    NCCL_CHECK(ncclGetUniqueId(&id));
    std::memcpy(id_bytes.data_ptr(), &id, sizeof(id));
  }
  bootstrap_->broadcast(id_bytes, 0);
  std::memcpy(&id, id_bytes.data_ptr(), sizeof(id));

  // 3. Communicator, stream, events, scratch.
  {
    Watchdog::Guard guard = bootstrap_->watchdog()->watch("ncclCommInitRank", name());
    NCCL_CHECK(ncclCommInitRank(&comm_, size(), id, rank()));
  }
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float)));
}

NcclCommunicator::~NcclCommunicator() {
  // Errors are ignored here: a destructor cannot report them, and the process may be exiting.
  cudaSetDevice(device_);
  if (comm_) ncclCommDestroy(comm_);
  if (ready_) cudaEventDestroy(ready_);
  if (done_) cudaEventDestroy(done_);
  if (stream_) cudaStreamDestroy(stream_);
  if (scratch_) cudaFree(scratch_);
}

torch::Device NcclCommunicator::device() const {
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device_));
}

void NcclCommunicator::check_nccl(ncclResult_t rc,
                                  const char* call,
                                  const char* file,
                                  int line) const {
  if (rc == ncclSuccess) return;
  const char* detail = comm_ ? ncclGetLastError(comm_) : nullptr;
  throw CommError(str("NCCL call ", call, " failed at ", file, ":", line, ": ",
                      ncclGetErrorString(rc), detail && *detail ? str(" (", detail, ")") : "", " (",
                      where(), ", host ", this_host_name(), ")"));
}

void NcclCommunicator::check_cuda(cudaError_t rc,
                                  const char* call,
                                  const char* file,
                                  int line) const {
  if (rc == cudaSuccess) return;
  throw CommError(str("CUDA call ", call, " failed at ", file, ":", line, ": ",
                      cudaGetErrorString(rc), " (", where(), ", device ", device_, ", host ",
                      this_host_name(), ")"));
}

NcclCommunicator::Call NcclCommunicator::begin(
    const char* op, std::initializer_list<const torch::Tensor*> tensors) {
  Call call;
  for (const torch::Tensor* t : tensors) {
    check_tensor(op, *t);
    check_same_dtype(op, **tensors.begin(), *t);
  }
  if (tensors.size() > 0) call.type = nccl_type((*tensors.begin())->scalar_type());
  CUDA_CHECK(cudaSetDevice(device_));
  // NOTE: NCCL reads inputs the compute stream may still be writing: order after it.
  CUDA_CHECK(cudaEventRecord(ready_, options_.compute_stream));
  CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  call.guard = bootstrap_->watchdog()->watch(op, name());
  return call;
}

void NcclCommunicator::finish(Call& call) {
  CUDA_CHECK(cudaEventRecord(done_, stream_));
  // Later compute reads the outputs: order it after the op. Tensors stay valid because the
  // compute stream (their allocation stream) is ordered after every use on stream_.
  CUDA_CHECK(cudaStreamWaitEvent(options_.compute_stream, done_, 0));
  if (!options_.blocking) return;
  // NOTE: host sync. Poll (not cudaEventSynchronize) so NCCL's async errors surface as
  // CommError and the watchdog guard stays registered until the data has arrived.
  while (true) {
    const cudaError_t rc = cudaEventQuery(done_);
    if (rc == cudaSuccess) return;
    if (rc != cudaErrorNotReady) CUDA_CHECK(rc);
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
    NCCL_CHECK(async);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void NcclCommunicator::all_reduce(torch::Tensor& t, ReduceOp op) {
  check_reduce("all_reduce", op, t);
  Call call = begin("all_reduce", {&t});
  NCCL_CHECK(
      ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), call.type, nccl_op(op), comm_, stream_));
  finish(call);
}

void NcclCommunicator::reduce_scatter(const torch::Tensor& in, torch::Tensor& out, ReduceOp op) {
  check_reduce("reduce_scatter", op, in);
  Call call = begin("reduce_scatter", {&in, &out});
  CONDENSA_CHECK(out.dim() >= 1 && in.dim() == out.dim() && in.size(0) == size() * out.size(0) &&
                     in.numel() == size() * out.numel(),
                 CommError, "reduce_scatter: input ", in.sizes(), " must be [", size(),
                 " * n, ...] for output ", out.sizes(), " (", where(), ")");
  NCCL_CHECK(ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), call.type, nccl_op(op),
                               comm_, stream_));
  finish(call);
}

void NcclCommunicator::all_gather(const torch::Tensor& in, torch::Tensor& out) {
  Call call = begin("all_gather", {&in, &out});
  CONDENSA_CHECK(in.dim() >= 1 && in.dim() == out.dim() && out.size(0) == size() * in.size(0) &&
                     out.numel() == size() * in.numel(),
                 CommError, "all_gather: output ", out.sizes(), " must be [", size(),
                 " * n, ...] for input ", in.sizes(), " (", where(), ")");
  NCCL_CHECK(ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), call.type, comm_, stream_));
  finish(call);
}

void NcclCommunicator::broadcast(torch::Tensor& t, int root) {
  CONDENSA_CHECK(root >= 0 && root < size(), CommError, "broadcast: root ", root,
                 " is not a rank in [0, ", size(), ") (", where(), ")");
  Call call = begin("broadcast", {&t});
  NCCL_CHECK(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), call.type, root, comm_, stream_));
  finish(call);
}

void NcclCommunicator::barrier() {
  // NCCL has no barrier: a one-element all-reduce, waited for on the host.
  Call call = begin("barrier", {});
  NCCL_CHECK(ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_));
  finish(call);
  if (!options_.blocking) CUDA_CHECK(cudaEventSynchronize(done_));
}

void NcclCommunicator::all_to_all(const torch::Tensor& in,
                                  const std::vector<int64_t>& send_rows,
                                  torch::Tensor& out,
                                  const std::vector<int64_t>& recv_rows) {
  Call call = begin("all_to_all", {&in, &out});
  CONDENSA_CHECK(
      in.dim() >= 1 && out.dim() == in.dim() && in.sizes().slice(1) == out.sizes().slice(1),
      CommError, "all_to_all: input ", in.sizes(), " and output ", out.sizes(),
      " must be [rows, ...] with the same trailing dims (", where(), ")");
  CONDENSA_CHECK(
      static_cast<int>(send_rows.size()) == size() && static_cast<int>(recv_rows.size()) == size(),
      CommError, "all_to_all: send_rows (", send_rows.size(), ") and recv_rows (", recv_rows.size(),
      ") need one entry per rank (", size(), ") (", where(), ")");
  const int64_t row = row_numel(in);
  int64_t send_total = 0, recv_total = 0;
  for (int j = 0; j < size(); ++j) {
    CONDENSA_CHECK(send_rows[j] >= 0 && recv_rows[j] >= 0, CommError,
                   "all_to_all: negative row count for rank ", j, " (", where(), ")");
    send_total += send_rows[j];
    recv_total += recv_rows[j];
  }
  CONDENSA_CHECK(send_total == in.size(0) && recv_total == out.size(0), CommError,
                 "all_to_all: send_rows sum to ", send_total, " rows but input has ", in.size(0),
                 "; recv_rows sum to ", recv_total, " rows but output has ", out.size(0), " (",
                 where(), ")");
  NCCL_CHECK(ncclGroupStart());
  int64_t send_off = 0, recv_off = 0;
  for (int j = 0; j < size(); ++j) {
    if (send_rows[j] > 0) {
      NCCL_CHECK(
          ncclSend(bytes_at(in, send_off), send_rows[j] * row, call.type, j, comm_, stream_));
    }
    if (recv_rows[j] > 0) {
      NCCL_CHECK(
          ncclRecv(bytes_at(out, recv_off), recv_rows[j] * row, call.type, j, comm_, stream_));
    }
    send_off += send_rows[j] * row;
    recv_off += recv_rows[j] * row;
  }
  NCCL_CHECK(ncclGroupEnd());
  finish(call);
}

void NcclCommunicator::send(const torch::Tensor& t, int peer) {
  check_peer("send", peer);
  Call call = begin("send", {&t});
  NCCL_CHECK(ncclSend(t.data_ptr(), t.numel(), call.type, peer, comm_, stream_));
  finish(call);
}

void NcclCommunicator::recv(torch::Tensor& t, int peer) {
  check_peer("recv", peer);
  Call call = begin("recv", {&t});
  NCCL_CHECK(ncclRecv(t.data_ptr(), t.numel(), call.type, peer, comm_, stream_));
  finish(call);
}

void NcclCommunicator::post_send(const torch::Tensor& t, int peer) {
  check_peer("post_send", peer);
  Call call = begin("post_send", {&t});
  NCCL_CHECK(ncclSend(t.data_ptr(), t.numel(), call.type, peer, comm_, stream_));
  // NOTE: no host wait: the compute stream is ordered after the send (finish), which keeps t's
  // memory in use until it has been sent; wait_sends() synchronises.
  const bool blocking = options_.blocking;
  options_.blocking = false;
  finish(call);
  options_.blocking = blocking;
}

void NcclCommunicator::wait_sends() {
  Call call = begin("wait_sends", {});
  finish(call);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  std::unique_ptr<MpiCommunicator> part = bootstrap_->split_mpi(color, key);
  if (!part) return nullptr;
  NcclOptions options = options_;
  options.device = device_;
  return std::make_unique<NcclCommunicator>(std::move(part), options);
}

std::vector<int> NcclCommunicator::discover_node_map() { return bootstrap_->discover_node_map(); }

torch::Tensor NcclCommunicator::to_device(const torch::Tensor& cpu) const {
  const torch::Tensor host = cpu.to(torch::kCPU).contiguous();
  const size_t bytes = host.numel() * host.element_size();
  void* ptr = nullptr;
  CUDA_CHECK(cudaSetDevice(device_));
  CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)));
  torch::Tensor t = at::for_blob(ptr, host.sizes())
                        .deleter([](void* p) { cudaFree(p); })
                        .options(torch::TensorOptions().dtype(host.dtype()).device(device()))
                        .target_device(device())
                        .make_tensor();
  if (bytes > 0) {
    CUDA_CHECK(cudaMemcpyAsync(ptr, host.data_ptr(), bytes, cudaMemcpyHostToDevice,
                               options_.compute_stream));
    CUDA_CHECK(cudaStreamSynchronize(options_.compute_stream));
  }
  return t;
}

torch::Tensor NcclCommunicator::to_cpu(const torch::Tensor& t) const {
  check_tensor("to_cpu", t);
  torch::Tensor host = torch::empty(t.sizes(), torch::TensorOptions().dtype(t.dtype()));
  const size_t bytes = t.numel() * t.element_size();
  if (bytes > 0) {
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaMemcpyAsync(host.data_ptr(), t.data_ptr(), bytes, cudaMemcpyDeviceToHost,
                               options_.compute_stream));
    CUDA_CHECK(cudaStreamSynchronize(options_.compute_stream));
  }
  return host;
}

}  // namespace condensa::parallel
