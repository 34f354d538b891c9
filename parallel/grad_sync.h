// Gradient synchronisation over a data-parallel group: the flat-buffer layout of a parameter
// group (ShardPlan) and the collectives that sum gradients and gather ZeRO-1 shards.
//
// Key design choice: one ShardPlan owns all of ZeRO's flat-buffer arithmetic: tensor offsets,
// padding to a multiple of the group size, this rank's [begin, end), and the one function that
// intersects tensors with a range (ShardPlan::overlaps). The optimizer update, the export and
// import of optimizer state and the checkpoint's per-expert pieces all ask it instead of
// recomputing overlaps. ZeRO-0 is the plan in which every rank owns the whole padded buffer,
// so the update code has no second path.
//
// The collectives are the ones the trainer always ran, in the same order: ZeRO-0 all-reduces
// the flat gradient in buckets of kGradBucketElements (skipped on a group of one), ZeRO-1
// reduce-scatters it in one call and all-gathers the updated shards in one call; on a group of
// one rank neither stage calls anything or copies.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace condensa::parallel {

// Elements per ZeRO-0 all-reduce: 64 MiB of fp32 gradients, which bounds message sizes and the
// memory of the reduction's temporaries.
constexpr int64_t kGradBucketElements = int64_t(1) << 24;

// Half-open range [begin, end) of element indices.
struct ElementRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end > begin ? end - begin : 0; }
  bool empty() const { return end <= begin; }
};

// The intersection of two ranges; empty when they do not meet.
ElementRange intersect(ElementRange a, ElementRange b);

// The part of one tensor of a plan that lies inside a range of the flat buffer.
struct ShardOverlap {
  int64_t tensor = 0;         // index of the tensor in the plan
  int64_t tensor_offset = 0;  // first overlapping element within the flattened tensor
  int64_t range_offset = 0;   // first overlapping element within the range
  int64_t size = 0;           // number of overlapping elements (> 0)
};

// Layout of tensors concatenated (flattened, in order) into one flat buffer padded with zeros to
// a multiple of num_shards, and the range of it that this rank owns.
class ShardPlan {
 public:
  // numels: element count of each tensor in buffer order. With `sharded` (ZeRO-1) shard
  // `shard_index` of num_shards equal shards is owned; otherwise the whole padded buffer.
  ShardPlan(std::vector<int64_t> numels, int num_shards, int shard_index, bool sharded);

  int64_t num_tensors() const { return static_cast<int64_t>(numel_.size()); }
  int64_t numel(int64_t i) const { return numel_.at(i); }
  int64_t offset(int64_t i) const { return offset_.at(i); }
  ElementRange tensor_range(int64_t i) const { return {offset(i), offset(i) + numel(i)}; }
  int64_t total() const { return total_; }    // sum of numels
  int64_t padded() const { return padded_; }  // total rounded up to a multiple of num_shards
  int num_shards() const { return num_shards_; }
  bool sharded() const { return sharded_; }
  // Range of ZeRO-1 shard `index` (padded / num_shards elements each).
  ElementRange shard_range(int index) const;
  // The range this rank owns: its shard (sharded) or the whole padded buffer.
  ElementRange owned() const { return owned_; }

  // Every tensor's intersection with `range`, in buffer order; tensors outside it are skipped.
  std::vector<ShardOverlap> overlaps(ElementRange range) const;
  // overlaps(owned()).
  std::vector<ShardOverlap> owned_overlaps() const { return overlaps(owned_); }

 private:
  std::vector<int64_t> numel_, offset_;
  int64_t total_ = 0, padded_ = 0;
  int num_shards_ = 1;
  bool sharded_ = false;
  ElementRange owned_;
};

// Consecutive ranges of at most `bucket_elements` covering [0, n).
std::vector<ElementRange> gradient_buckets(int64_t n, int64_t bucket_elements);

// Concatenates flattened `parts` (the plan's tensors, in order) and zero padding on `device`
// into one buffer of plan.padded() elements.
torch::Tensor flatten_padded(const std::vector<torch::Tensor>& parts,
                             const ShardPlan& plan,
                             torch::Device device);

// Sums the flat gradient buffer (plan.padded() elements) over `comm` and returns the owned
// part: ZeRO-1 reduce-scatters into a new shard; ZeRO-0 all-reduces `flat` in place, bucket by
// bucket, and returns it.
torch::Tensor reduce_gradients(torch::Tensor flat, const ShardPlan& plan, Communicator& comm);

// Sums, in place, a per-rank partial result over owned elements (e.g. a sum of squares) into
// the group's total: ZeRO-1 all-reduces over `comm`; with ZeRO-0 every rank already has it.
void sum_owned_partials(torch::Tensor& partial, const ShardPlan& plan, Communicator& comm);

// After each rank updated its owned part of `flat`, makes `flat` whole on every rank: ZeRO-1
// all-gathers the shards; ZeRO-0 has nothing to do.
void gather_shards(torch::Tensor& flat, const ShardPlan& plan, Communicator& comm);

}  // namespace condensa::parallel
