// Argument checks shared by every backend, and the helpers built on the virtual ops.
#include "parallel/communicator.h"

#include <algorithm>

#include "common/error.h"

namespace condensa::parallel {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kAvg:
      return "avg";
  }
  return "?";
}

bool is_supported_dtype(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32:
    case torch::kFloat64:
    case torch::kBFloat16:
    case torch::kFloat16:
    case torch::kInt64:
    case torch::kInt32:
    case torch::kUInt8:
      return true;
    default:
      return false;
  }
}

std::string Communicator::where() const {
  return str("rank ", rank(), " of ", name_, " (", size(), " ranks, ", backend_name(), ")");
}

void Communicator::check_tensor(const char* op, const torch::Tensor& t) const {
  CONDENSA_CHECK(t.defined(), CommError, "Communicator ", backend_name(), " ", op,
                 ": undefined tensor (", where(), ")");
  CONDENSA_CHECK(is_supported_dtype(t.scalar_type()), CommError, "Communicator ", backend_name(),
                 " does not support dtype ", t.scalar_type(), " in ", op, " (", where(), ")");
  CONDENSA_CHECK(t.device() == device(), CommError, "Communicator ", backend_name(), " ", op,
                 ": tensor is on ", t.device(), " but this communicator moves tensors on ",
                 device(), " (", where(), ")");
  CONDENSA_CHECK(t.is_contiguous(), CommError, "Communicator ", backend_name(), " ", op,
                 ": tensor of shape ", t.sizes(), " must be contiguous (", where(), ")");
}

void Communicator::check_same_dtype(const char* op,
                                    const torch::Tensor& a,
                                    const torch::Tensor& b) const {
  CONDENSA_CHECK(a.scalar_type() == b.scalar_type(), CommError, "Communicator ", backend_name(),
                 " ", op, ": input dtype ", a.scalar_type(), " != output dtype ", b.scalar_type(),
                 " (", where(), ")");
}

void Communicator::check_reduce(const char* op, ReduceOp reduce, const torch::Tensor& t) const {
  CONDENSA_CHECK(reduce != ReduceOp::kAvg || torch::isFloatingType(t.scalar_type()), CommError,
                 "Communicator ", backend_name(), " does not support ", op, "(avg) on dtype ",
                 t.scalar_type(), "; average needs a floating-point dtype (", where(), ")");
}

void Communicator::check_peer(const char* op, int peer) const {
  CONDENSA_CHECK(peer >= 0 && peer < size() && peer != rank(), CommError, "Communicator ",
                 backend_name(), " ", op, ": peer ", peer, " must be another rank in [0, ", size(),
                 ") (", where(), ")");
}

std::vector<int64_t> Communicator::all_gather_int64(const std::vector<int64_t>& values) {
  const auto n = static_cast<int64_t>(values.size());
  // Exchange lengths first, so that ranks disagreeing on the length fail together, not hang.
  torch::Tensor len = to_device(torch::full({1}, n, torch::kInt64));
  torch::Tensor lens = to_device(torch::empty({size()}, torch::kInt64));
  all_gather(len, lens);
  torch::Tensor lens_cpu = to_cpu(lens);
  for (int j = 0; j < size(); ++j) {
    const int64_t other = lens_cpu[j].item<int64_t>();
    CONDENSA_CHECK(other == n, CommError, "all_gather_int64 on ", name_, ": rank ", j, " passed ",
                   other, " values but rank ", rank(), " passed ", n,
                   "; every rank must pass the same number");
  }
  std::vector<int64_t> result(static_cast<size_t>(n * size()));
  if (n == 0) return result;
  torch::Tensor in = to_device(torch::tensor(values, torch::kInt64));
  torch::Tensor out = to_device(torch::empty({n * size()}, torch::kInt64));
  all_gather(in, out);
  torch::Tensor out_cpu = to_cpu(out);
  std::copy_n(out_cpu.data_ptr<int64_t>(), result.size(), result.begin());
  return result;
}

std::vector<std::string> Communicator::all_gather_string(const std::string& text) {
  const std::vector<int64_t> lengths = all_gather_int64({static_cast<int64_t>(text.size())});
  const int64_t max_len = std::max<int64_t>(1, *std::max_element(lengths.begin(), lengths.end()));
  torch::Tensor padded = torch::zeros({max_len}, torch::kUInt8);
  std::copy(text.begin(), text.end(), reinterpret_cast<char*>(padded.data_ptr<uint8_t>()));
  torch::Tensor out = to_device(torch::empty({max_len * size()}, torch::kUInt8));
  all_gather(to_device(padded), out);
  torch::Tensor out_cpu = to_cpu(out);
  const char* bytes = reinterpret_cast<const char*>(out_cpu.data_ptr<uint8_t>());
  std::vector<std::string> result;
  for (int j = 0; j < size(); ++j) result.emplace_back(bytes + j * max_len, lengths[j]);
  return result;
}

}  // namespace condensa::parallel
