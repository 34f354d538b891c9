#include "parallel/grad_sync.h"

#include <algorithm>

#include "common/error.h"

namespace condensa::parallel {

ElementRange intersect(ElementRange a, ElementRange b) {
  const int64_t begin = std::max(a.begin, b.begin), end = std::min(a.end, b.end);
  return begin < end ? ElementRange{begin, end} : ElementRange{begin, begin};
}

ShardPlan::ShardPlan(std::vector<int64_t> numels, int num_shards, int shard_index, bool sharded)
    : numel_(std::move(numels)), num_shards_(num_shards), sharded_(sharded) {
  CONDENSA_CHECK(num_shards >= 1, Error, "ShardPlan: num_shards (", num_shards,
                 ") must be at least 1");
  CONDENSA_CHECK(shard_index >= 0 && shard_index < num_shards, Error, "ShardPlan: shard index (",
                 shard_index, ") must be in [0, ", num_shards, ")");
  for (size_t i = 0; i < numel_.size(); ++i) {
    CONDENSA_CHECK(numel_[i] >= 0, Error, "ShardPlan: tensor ", i, " has ", numel_[i], " elements");
    offset_.push_back(total_);
    total_ += numel_[i];
  }
  padded_ = (total_ + num_shards - 1) / num_shards * num_shards;
  owned_ = sharded_ ? shard_range(shard_index) : ElementRange{0, padded_};
}

ElementRange ShardPlan::shard_range(int index) const {
  CONDENSA_CHECK(index >= 0 && index < num_shards_, Error, "ShardPlan: shard index (", index,
                 ") must be in [0, ", num_shards_, ")");
  const int64_t shard = padded_ / num_shards_;
  return {index * shard, (index + 1) * shard};
}

std::vector<ShardOverlap> ShardPlan::overlaps(ElementRange range) const {
  std::vector<ShardOverlap> out;
  for (int64_t i = 0; i < num_tensors(); ++i) {
    const ElementRange both = intersect(tensor_range(i), range);
    if (both.empty()) continue;
    out.push_back({i, both.begin - offset(i), both.begin - range.begin, both.size()});
  }
  return out;
}

std::vector<ElementRange> gradient_buckets(int64_t n, int64_t bucket_elements) {
  CONDENSA_CHECK(bucket_elements > 0, Error, "gradient bucket size (", bucket_elements,
                 ") must be positive");
  std::vector<ElementRange> out;
  for (int64_t begin = 0; begin < n; begin += bucket_elements)
    out.push_back({begin, std::min(n, begin + bucket_elements)});
  return out;
}

torch::Tensor flatten_padded(const std::vector<torch::Tensor>& parts,
                             const ShardPlan& plan,
                             torch::Device device) {
  CONDENSA_CHECK(static_cast<int64_t>(parts.size()) == plan.num_tensors(), Error,
                 "flatten_padded: ", parts.size(), " tensors for a plan of ", plan.num_tensors());
  std::vector<torch::Tensor> flat(parts.begin(), parts.end());
  if (plan.padded() > plan.total())
    flat.push_back(
        torch::zeros({plan.padded() - plan.total()}, torch::TensorOptions().device(device)));
  return torch::cat(flat);
}

torch::Tensor reduce_gradients(torch::Tensor flat, const ShardPlan& plan, Communicator& comm) {
  CONDENSA_CHECK(flat.numel() == plan.padded(), Error, "reduce_gradients over ", comm.name(),
                 ": flat buffer has ", flat.numel(), " elements, the plan ", plan.padded());
  if (comm.size() == 1) return flat;  // nothing to sum; a shard of one is the whole buffer
  if (plan.sharded()) {
    auto shard = torch::empty({plan.owned().size()}, flat.options());
    comm.reduce_scatter(flat, shard, ReduceOp::kSum);
    return shard;
  }
  if (comm.size() > 1) {
    for (const auto& b : gradient_buckets(plan.padded(), kGradBucketElements)) {
      auto bucket = flat.narrow(0, b.begin, b.size());
      comm.all_reduce(bucket, ReduceOp::kSum);
    }
  }
  return flat;
}

void sum_owned_partials(torch::Tensor& partial, const ShardPlan& plan, Communicator& comm) {
  if (plan.sharded() && comm.size() > 1) comm.all_reduce(partial, ReduceOp::kSum);
}

void gather_shards(torch::Tensor& flat, const ShardPlan& plan, Communicator& comm) {
  if (!plan.sharded() || comm.size() == 1) return;
  auto shard = flat.narrow(0, plan.owned().begin, plan.owned().size()).clone();
  comm.all_gather(shard, flat);
}

}  // namespace condensa::parallel
