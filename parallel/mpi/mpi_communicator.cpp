// MPI backend: see mpi_communicator.h.
#include "parallel/mpi/mpi_communicator.h"

#include <climits>
#include <numeric>

#include "common/error.h"

// MPI_CHECK(call): runs an MPI call on this communicator and throws CommError with the call
// text, file:line, MPI's error string, rank and host when it fails.
#define MPI_CHECK(call) check((call), #call, __FILE__, __LINE__)

namespace condensa::parallel {

namespace {

MPI_Datatype mpi_type(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return MPI_FLOAT;
    case torch::kFloat64:
      return MPI_DOUBLE;
    case torch::kBFloat16:
    case torch::kFloat16:
      return MPI_UINT16_T;  // moved as raw 16-bit words; reductions go through float32
    case torch::kInt64:
      return MPI_INT64_T;
    case torch::kInt32:
      return MPI_INT32_T;
    case torch::kUInt8:
      return MPI_UINT8_T;
    default:
      return MPI_DATATYPE_NULL;  // unreachable: check_tensor rejected the dtype
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
    case ReduceOp::kSum:
    case ReduceOp::kAvg:  // sum, then divide by size()
      return MPI_SUM;
  }
  return MPI_OP_NULL;
}

int as_count(int64_t n, const char* op) {
  CONDENSA_CHECK(n <= INT_MAX, CommError, "MPI ", op, ": ", n,
                 " elements exceed one MPI call's count limit (", INT_MAX, ")");
  return static_cast<int>(n);
}

// Elements per row of dim 0 (the product of the trailing dims; also right for zero rows).
int64_t row_numel(const torch::Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// MpiRuntime

MpiRuntime::MpiRuntime() : MpiRuntime(nullptr, nullptr) {}

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Query_thread(&thread_level_);
    return;
  }
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &thread_level_);
  CONDENSA_CHECK(rc == MPI_SUCCESS, CommError, "MPI_Init_thread failed (code ", rc, ") on host ",
                 this_host_name());
  owns_ = true;
}

MpiRuntime::~MpiRuntime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_ && !finalized) MPI_Finalize();
}

// ---------------------------------------------------------------------------------------------
// MpiCommunicator

struct MpiCommunicator::Call {
  MPI_Datatype type = MPI_DATATYPE_NULL;
  Watchdog::Guard guard;
};

std::unique_ptr<MpiCommunicator> MpiCommunicator::world(double timeout_s) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  CONDENSA_CHECK(initialized, CommError,
                 "MpiCommunicator::world: MPI is not initialised (create an MpiRuntime first)");
  MPI_Comm dup = MPI_COMM_NULL;
  const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  CONDENSA_CHECK(rc == MPI_SUCCESS, CommError, "MPI_Comm_dup(MPI_COMM_WORLD) failed (code ", rc,
                 ") on host ", this_host_name());
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  WatchdogOptions watchdog;
  watchdog.timeout_s = timeout_s;
  watchdog.rank = world_rank;
  return std::make_unique<MpiCommunicator>(dup, "world",
                                           std::make_shared<Watchdog>(std::move(watchdog)));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm,
                                 std::string name,
                                 std::shared_ptr<Watchdog> watchdog)
    : Communicator(std::move(name)), comm_(comm), watchdog_(std::move(watchdog)) {
  CONDENSA_CHECK(comm_ != MPI_COMM_NULL, CommError, "MpiCommunicator: null communicator");
  CONDENSA_CHECK(watchdog_ != nullptr, CommError, "MpiCommunicator: null watchdog");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::check(int rc, const char* call, const char* file, int line) const {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw CommError(str("MPI call ", call, " failed at ", file, ":", line, ": ", text, " (", where(),
                      ", host ", this_host_name(), ")"));
}

MpiCommunicator::Call MpiCommunicator::begin(const char* op,
                                             std::initializer_list<const torch::Tensor*> tensors) {
  Call call;
  for (const torch::Tensor* t : tensors) {
    check_tensor(op, *t);
    check_same_dtype(op, **tensors.begin(), *t);
    as_count(t->numel(), op);
  }
  if (tensors.size() > 0) call.type = mpi_type((*tensors.begin())->scalar_type());
  call.guard = watchdog_->watch(op, name());
  return call;
}

bool MpiCommunicator::reduce_via_float(const torch::Tensor& t) const {
  return t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kFloat16;
}

void MpiCommunicator::all_reduce(torch::Tensor& t, ReduceOp op) {
  check_tensor("all_reduce", t);
  check_reduce("all_reduce", op, t);
  if (reduce_via_float(t)) {
    torch::Tensor wide = t.to(torch::kFloat32);
    all_reduce(wide, op);
    t.copy_(wide);
    return;
  }
  Call call = begin("all_reduce", {&t});
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), call.type,
                          mpi_op(op), comm_));
  if (op == ReduceOp::kAvg) t.div_(size_);
}

void MpiCommunicator::reduce_scatter(const torch::Tensor& in, torch::Tensor& out, ReduceOp op) {
  check_tensor("reduce_scatter", in);
  check_tensor("reduce_scatter", out);
  check_same_dtype("reduce_scatter", in, out);
  check_reduce("reduce_scatter", op, in);
  CONDENSA_CHECK(out.dim() >= 1 && in.dim() == out.dim() && in.size(0) == size_ * out.size(0) &&
                     in.numel() == size_ * out.numel(),
                 CommError, "reduce_scatter: input ", in.sizes(), " must be [", size_,
                 " * n, ...] for output ", out.sizes(), " (", where(), ")");
  if (reduce_via_float(in)) {
    torch::Tensor wide_out = torch::empty(out.sizes(), torch::kFloat32);
    reduce_scatter(in.to(torch::kFloat32), wide_out, op);
    out.copy_(wide_out);
    return;
  }
  Call call = begin("reduce_scatter", {&in, &out});
  MPI_CHECK(MPI_Reduce_scatter_block(in.data_ptr(), out.data_ptr(), static_cast<int>(out.numel()),
                                     call.type, mpi_op(op), comm_));
  if (op == ReduceOp::kAvg) out.div_(size_);
}

void MpiCommunicator::all_gather(const torch::Tensor& in, torch::Tensor& out) {
  Call call = begin("all_gather", {&in, &out});
  CONDENSA_CHECK(in.dim() >= 1 && in.dim() == out.dim() && out.size(0) == size_ * in.size(0) &&
                     out.numel() == size_ * in.numel(),
                 CommError, "all_gather: output ", out.sizes(), " must be [", size_, " * ",
                 in.dim() >= 1 ? in.size(0) : 0, ", ...] for input ", in.sizes(), " (", where(),
                 ")");
  MPI_CHECK(MPI_Allgather(in.data_ptr(), static_cast<int>(in.numel()), call.type, out.data_ptr(),
                          static_cast<int>(in.numel()), call.type, comm_));
}

void MpiCommunicator::broadcast(torch::Tensor& t, int root) {
  CONDENSA_CHECK(root >= 0 && root < size_, CommError, "broadcast: root ", root,
                 " is not a rank in [0, ", size_, ") (", where(), ")");
  Call call = begin("broadcast", {&t});
  MPI_CHECK(MPI_Bcast(t.data_ptr(), static_cast<int>(t.numel()), call.type, root, comm_));
}

void MpiCommunicator::barrier() {
  Call call = begin("barrier", {});
  MPI_CHECK(MPI_Barrier(comm_));
}

void MpiCommunicator::all_to_all(const torch::Tensor& in,
                                 const std::vector<int64_t>& send_rows,
                                 torch::Tensor& out,
                                 const std::vector<int64_t>& recv_rows) {
  Call call = begin("all_to_all", {&in, &out});
  CONDENSA_CHECK(
      in.dim() >= 1 && out.dim() == in.dim() && in.sizes().slice(1) == out.sizes().slice(1),
      CommError, "all_to_all: input ", in.sizes(), " and output ", out.sizes(),
      " must be [rows, ...] with the same trailing dims (", where(), ")");
  CONDENSA_CHECK(
      static_cast<int>(send_rows.size()) == size_ && static_cast<int>(recv_rows.size()) == size_,
      CommError, "all_to_all: send_rows (", send_rows.size(), ") and recv_rows (", recv_rows.size(),
      ") need one entry per rank (", size_, ") (", where(), ")");
  const int64_t row = row_numel(in);
  std::vector<int> send_counts(size_), send_displs(size_), recv_counts(size_), recv_displs(size_);
  int64_t send_off = 0, recv_off = 0;
  for (int j = 0; j < size_; ++j) {
    CONDENSA_CHECK(send_rows[j] >= 0 && recv_rows[j] >= 0, CommError,
                   "all_to_all: negative row count for rank ", j, " (", where(), ")");
    send_counts[j] = as_count(send_rows[j] * row, "all_to_all");
    recv_counts[j] = as_count(recv_rows[j] * row, "all_to_all");
    send_displs[j] = as_count(send_off, "all_to_all");
    recv_displs[j] = as_count(recv_off, "all_to_all");
    send_off += send_rows[j] * row;
    recv_off += recv_rows[j] * row;
  }
  CONDENSA_CHECK(send_off == in.numel() && recv_off == out.numel(), CommError,
                 "all_to_all: send_rows sum to ", send_off / std::max<int64_t>(row, 1),
                 " rows but input has ", in.size(0), "; recv_rows sum to ",
                 recv_off / std::max<int64_t>(row, 1), " rows but output has ", out.size(0), " (",
                 where(), ")");
  MPI_CHECK(MPI_Alltoallv(in.data_ptr(), send_counts.data(), send_displs.data(), call.type,
                          out.data_ptr(), recv_counts.data(), recv_displs.data(), call.type,
                          comm_));
}

void MpiCommunicator::send(const torch::Tensor& t, int peer) {
  check_peer("send", peer);
  Call call = begin("send", {&t});
  MPI_CHECK(MPI_Send(t.data_ptr(), static_cast<int>(t.numel()), call.type, peer, 0, comm_));
}

void MpiCommunicator::recv(torch::Tensor& t, int peer) {
  check_peer("recv", peer);
  Call call = begin("recv", {&t});
  MPI_Status status;
  MPI_CHECK(
      MPI_Recv(t.data_ptr(), static_cast<int>(t.numel()), call.type, peer, 0, comm_, &status));
  int received = 0;
  MPI_CHECK(MPI_Get_count(&status, call.type, &received));
  CONDENSA_CHECK(received == t.numel(), CommError, "recv: got ", received, " elements from rank ",
                 peer, " but the tensor ", t.sizes(), " holds ", t.numel(), " (", where(), ")");
}

void MpiCommunicator::post_send(const torch::Tensor& t, int peer) {
  check_peer("post_send", peer);
  Call call = begin("post_send", {&t});
  send_requests_.emplace_back();
  MPI_CHECK(MPI_Isend(t.data_ptr(), static_cast<int>(t.numel()), call.type, peer, 0, comm_,
                      &send_requests_.back()));
  send_tensors_.push_back(t);
  send_peers_.push_back(peer);
}

void MpiCommunicator::wait_sends() {
  if (send_requests_.empty()) return;
  std::string peers;
  for (int p : send_peers_) peers += str(peers.empty() ? "" : ",", p);
  Call call = begin("wait_sends", {});
  call.guard = watchdog_->watch(str("send to rank ", peers, " (posted, not received)"), name());
  MPI_CHECK(MPI_Waitall(static_cast<int>(send_requests_.size()), send_requests_.data(),
                        MPI_STATUSES_IGNORE));
  send_requests_.clear();
  send_tensors_.clear();
  send_peers_.clear();
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split_mpi(int color, int key) {
  Call call = begin("split", {});
  MPI_Comm child = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &child));
  if (child == MPI_COMM_NULL) return nullptr;
  return std::make_unique<MpiCommunicator>(child, str(name(), "/", color), watchdog_);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  return split_mpi(color, key);
}

std::vector<int> MpiCommunicator::discover_node_map() {
  MPI_Comm shared = MPI_COMM_NULL;
  {
    Call call = begin("discover_node_map", {});
    MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &shared));
  }
  // Each node is named by its lowest rank: rank 0 of the node-local communicator (key = rank).
  MpiCommunicator node(shared, str(name(), "/node"), watchdog_);
  torch::Tensor leader = torch::full({1}, static_cast<int64_t>(rank_), torch::kInt64);
  node.broadcast(leader, 0);
  const std::vector<int64_t> leaders = all_gather_int64({leader.item<int64_t>()});
  std::vector<int> node_of_rank(size_);
  std::vector<int64_t> seen;
  for (int j = 0; j < size_; ++j) {
    auto it = std::find(seen.begin(), seen.end(), leaders[j]);
    if (it == seen.end()) it = seen.insert(seen.end(), leaders[j]);
    node_of_rank[j] = static_cast<int>(it - seen.begin());
  }
  return node_of_rank;
}

// Copies, like every backend's: the result never aliases the argument.
torch::Tensor MpiCommunicator::to_device(const torch::Tensor& cpu) const {
  return cpu.to(torch::kCPU).clone(torch::MemoryFormat::Contiguous);
}

torch::Tensor MpiCommunicator::to_cpu(const torch::Tensor& t) const {
  return t.to(torch::kCPU).clone(torch::MemoryFormat::Contiguous);
}

}  // namespace condensa::parallel
