#include "trainer/checkpoint/state.h"

#include <filesystem>
#include <map>

#include "common/error.h"
#include "model/param_names.h"
#include "parallel/grad_sync.h"
#include "trainer/checkpoint/directory.h"
#include "trainer/checkpoint/safetensors.h"

namespace fs = std::filesystem;

namespace condensa::trainer {

namespace {

// A local (param, [start, end)) range mapped to global tensors: for stacked experts one range
// per expert slice it touches.
struct GlobalRange {
  std::string name;
  int64_t start, end;              // in the global tensor
  int64_t local_start, local_end;  // in the local flattened parameter
  std::vector<int64_t> shape;
};

std::vector<GlobalRange> to_global(const std::string& name,
                                   const torch::Tensor& p,
                                   int64_t first_expert,
                                   int64_t start,
                                   int64_t end) {
  if (!model::is_expert_param(name)) return {{name, start, end, start, end, p.sizes().vec()}};
  std::vector<GlobalRange> out;
  auto shape = p.sizes().vec();
  shape.erase(shape.begin());
  // A stacked expert parameter is a flat buffer of one slice per local expert.
  const parallel::ShardPlan slices(std::vector<int64_t>(p.size(0), p.numel() / p.size(0)), 1, 0,
                                   false);
  for (const auto& o : slices.overlaps({start, end})) {
    const int64_t local = start + o.range_offset;
    out.push_back({model::expert_global_name(name, first_expert + o.tensor), o.tensor_offset,
                   o.tensor_offset + o.size, local, local + o.size, shape});
  }
  return out;
}

// Non-finite elements of the tensors every rank is about to save, summed over the world.
int64_t count_non_finite(const NamedTensors& tensors, parallel::Communicator& world) {
  int64_t local = 0;
  for (const auto& [name, t] : tensors) {
    if (t.is_floating_point()) local += t.numel() - torch::isfinite(t).sum().item<int64_t>();
  }
  auto total = world.to_device(torch::tensor({local}, torch::kInt64));
  world.all_reduce(total, parallel::ReduceOp::kSum);
  return world.to_cpu(total).item<int64_t>();
}

std::string piece_key(const std::string& name, int64_t start) {
  return name + "@" + std::to_string(start);
}

}  // namespace

std::string save_checkpoint(const SaveRequest& req,
                            model::TransformerImpl& model,
                            const Optimizer& optim,
                            parallel::Communicator& world) {
  torch::NoGradGuard no_grad;
  // Model tensors this rank owns.
  NamedTensors model_tensors;
  for (auto& item : model.named_parameters()) {
    const auto& name = item.key();
    auto& p = item.value();
    if (model::is_expert_param(name)) {
      if (!req.write_experts) continue;
      const int64_t first = model.first_expert_of(p);
      for (int64_t e = 0; e < p.size(0); ++e)
        model_tensors.emplace_back(model::expert_global_name(name, first + e), p[e].cpu());
    } else if (req.write_dense &&
               (req.skip_prefix.empty() || name.rfind(req.skip_prefix, 0) != 0)) {
      model_tensors.emplace_back(name, p.detach().cpu());
    }
  }
  if (req.write_dense) {
    for (auto& item : model.named_buffers())
      model_tensors.emplace_back(item.key(), item.value().cpu());
  }

  // Optimizer pieces this rank owns.
  std::map<std::string, torch::Tensor> params;
  for (auto& item : model.named_parameters()) params[item.key()] = item.value();
  NamedTensors optim_tensors;
  nlohmann::json pieces = nlohmann::json::object();
  for (const auto& piece : optim.owned_state()) {
    const auto& p = params.at(piece.param);
    int64_t first = model::is_expert_param(piece.param) ? model.first_expert_of(p) : 0;
    for (const auto& r : to_global(piece.param, p, first, piece.start, piece.end)) {
      std::string global = r.name + "." + piece.kind;
      std::string key = piece_key(global, r.start);
      optim_tensors.emplace_back(
          key, piece.data.narrow(0, r.local_start - piece.start, r.end - r.start).cpu());
      pieces[key] = {{"name", global}, {"start", r.start}, {"end", r.end}, {"shape", r.shape}};
    }
  }

  // Never publish non-finite weights or optimizer state: refused on every rank alike.
  const int64_t bad_model = count_non_finite(model_tensors, world);
  const int64_t bad_optim = count_non_finite(optim_tensors, world);
  CONDENSA_CHECK(bad_model == 0 && bad_optim == 0, CheckpointError, "refusing to save checkpoint ",
                 step_dir_name(req.step), " in ", req.root, ": ", bad_model, " model and ",
                 bad_optim,
                 " optimizer values are not finite (NaN or inf); the previous checkpoint is kept");

  std::string tmp;
  if (world.rank() == 0) tmp = prepare_checkpoint_dir(req.root, req.step);
  world.barrier();
  tmp = (fs::path(req.root) / (".tmp-" + step_dir_name(req.step))).string();

  std::vector<std::string> files;
  const int rank = world.rank();
  if (!model_tensors.empty()) {
    files.push_back(rank_file_name("model", rank));
    save_safetensors((fs::path(tmp) / files.back()).string(), model_tensors, {{"format", "pt"}});
  }
  if (!optim_tensors.empty()) {
    files.push_back(rank_file_name("optim", rank));
    save_safetensors((fs::path(tmp) / files.back()).string(), optim_tensors,
                     {{"format", "pt"}, {"pieces", pieces.dump()}});
  }
  write_rank_manifest(tmp, rank, files);
  world.barrier();
  std::string committed;
  if (rank == 0)
    committed = commit_checkpoint(req.root, tmp, req.step, req.meta, world.size(), req.keep);
  world.barrier();
  return (fs::path(req.root) / step_dir_name(req.step)).string();
}

namespace {

std::vector<std::string> files_with_prefix(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (auto& entry : fs::directory_iterator(dir)) {
    auto name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && entry.path().extension() == ".safetensors")
      out.push_back(entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Assembles flattened global optimizer-state tensors from all pieces in the directory.
std::map<std::string, torch::Tensor> assemble_optim_state(const std::string& dir) {
  std::map<std::string, torch::Tensor> full;
  std::map<std::string, int64_t> covered;
  for (const auto& path : files_with_prefix(dir, "optim-")) {
    auto file = load_safetensors(path);
    auto it = file.metadata.find("pieces");
    CONDENSA_CHECK(it != file.metadata.end(), CheckpointError, path, ": no 'pieces' metadata");
    auto pieces = nlohmann::json::parse(it->second);
    for (auto& [key, info] : pieces.items()) {
      const std::string name = info["name"];
      const int64_t start = info["start"], end = info["end"];
      std::vector<int64_t> shape = info["shape"];
      int64_t numel = 1;
      for (auto s : shape) numel *= s;
      auto& t = full[name];
      if (!t.defined()) t = torch::zeros({numel}, torch::kFloat32);
      CONDENSA_CHECK(end <= t.numel(), CheckpointError, path, ": piece ", key, " ends at ", end,
                     " beyond ", t.numel());
      t.narrow(0, start, end - start).copy_(file.get(key).reshape({-1}));
      covered[name] += end - start;
    }
  }
  for (auto& [name, t] : full) {
    CONDENSA_CHECK(covered[name] == t.numel(), CheckpointError, dir, ": optimizer state ", name,
                   " covers ", covered[name], " of ", t.numel(), " elements");
  }
  return full;
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> load_global_model_tensors(
    const std::string& dir) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& path : files_with_prefix(dir, "model-")) {
    auto file = load_safetensors(path);
    for (auto& kv : file.tensors) out.push_back(kv);
  }
  CONDENSA_CHECK(!out.empty(), CheckpointError, dir, ": no model-rank*.safetensors files");
  return out;
}

void assign_global_tensors(model::TransformerImpl& model,
                           const std::function<torch::Tensor(const std::string&)>& get) {
  torch::NoGradGuard no_grad;
  auto check_shape = [](const std::string& name, const torch::Tensor& src,
                        const torch::Tensor& dst) {
    CONDENSA_CHECK(src.sizes() == dst.sizes(), CheckpointError, "tensor ", name, " has shape ",
                   src.sizes(), " but the model expects ", dst.sizes());
  };
  for (auto& item : model.named_parameters()) {
    const auto& name = item.key();
    auto& p = item.value();
    if (model::is_expert_param(name)) {
      const int64_t first = model.first_expert_of(p);
      for (int64_t e = 0; e < p.size(0); ++e) {
        auto g = model::expert_global_name(name, first + e);
        auto src = get(g);
        check_shape(g, src, p[e]);
        p[e].copy_(src);
      }
    } else {
      auto src = get(name);
      check_shape(name, src, p);
      p.copy_(src);
    }
  }
  for (auto& item : model.named_buffers()) {
    auto src = get(item.key());
    check_shape(item.key(), src, item.value());
    item.value().copy_(src);
  }
}

nlohmann::json load_checkpoint(const std::string& dir,
                               model::TransformerImpl& model,
                               Optimizer& optim) {
  auto meta = read_checkpoint_meta(dir);
  std::map<std::string, torch::Tensor> tensors;
  for (auto& kv : load_global_model_tensors(dir)) tensors[kv.first] = kv.second;
  auto get = [&](const std::string& name) {
    auto it = tensors.find(name);
    CONDENSA_CHECK(it != tensors.end(), CheckpointError, dir, ": tensor '", name,
                   "' is missing (checkpoint of ", "a different model shape?)");
    return it->second;
  };
  assign_global_tensors(model, get);

  auto state = assemble_optim_state(dir);
  if (state.empty()) {
    // An imported checkpoint carries weights only: the optimizer starts fresh.
    optim.set_step_count(0);
    return meta;
  }
  std::map<std::string, torch::Tensor> params;
  for (auto& item : model.named_parameters()) params[item.key()] = item.value();
  optim.load_state([&](const std::string& param, const std::string& kind) {
    const auto& p = params.at(param);
    auto lookup = [&](const std::string& global) {
      auto it = state.find(global + "." + kind);
      CONDENSA_CHECK(it != state.end(), CheckpointError, dir, ": optimizer state '", global, ".",
                     kind, "' is missing");
      return it->second;
    };
    if (!model::is_expert_param(param)) return lookup(param);
    const int64_t first = model.first_expert_of(p);
    std::vector<torch::Tensor> parts;
    for (int64_t e = 0; e < p.size(0); ++e)
      parts.push_back(lookup(model::expert_global_name(param, first + e)));
    return torch::cat(parts);
  });
  optim.set_step_count(meta.value("optimizer_steps", meta.value("step", int64_t(0))));
  return meta;
}

}  // namespace condensa::trainer
