// `condensa plan CONFIG.yaml`: parameter counts, FLOPs and memory per rank, from the config
// alone (nothing is allocated), so a 671B layout can be checked on a laptop.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/args.h"
#include "common/error.h"
#include "model/accounting.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/world.h"
#include "trainer/config/config.h"

namespace condensa::trainer {
namespace {

const char* kPlanHelp =
    R"(usage: condensa plan CONFIG.yaml [--set key=value ...] [--world N] [--json]

Prints total and activated parameters computed from the config (without allocating), model
FLOPs per token, and per-rank memory for parameters, gradients and AdamW state for a world of
N ranks (default: pipeline_parallel x expert_parallel). Counting rules: docs/model.md.
)";

std::string human(double n) {
  char buf[32];
  if (n >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  } else if (n >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f", n);
  }
  return buf;
}

}  // namespace

int plan_command(const Args& args) {
  auto a = parse_args(args, {"--world"}, {"--json"}, {"--set"});
  if (a.help) return std::fputs(kPlanHelp, stdout), 0;
  CONDENSA_CHECK(a.positional.size() == 1, ConfigError,
                 "expected exactly one CONFIG.yaml (see condensa plan --help)");
  Config cfg = load_config(a.positional[0], a.flags["--set"]);
  const auto& m = cfg.model;
  const int64_t world =
      a.get_int("--world", cfg.parallel.pipeline_parallel * cfg.parallel.expert_parallel);
  cfg.validate_for_world(world);
  const auto c = model::count_parameters(m);
  const int64_t dp = world / cfg.parallel.pipeline_parallel, ep = cfg.parallel.expert_parallel;
  // The expert/dense split of c.total. MTP modules are not part of c.total (c.mtp_total counts
  // them) and are left out of the per-rank estimate below.
  const double expert_params = c.routed_experts;
  const double dense_params = c.total - c.routed_experts;
  // Per rank: pipeline stages split the layers evenly; experts split over ep.
  const double pp = static_cast<double>(cfg.parallel.pipeline_parallel);
  const double params_rank = (dense_params + expert_params / ep) / pp;
  const double optim_dense = 8.0 * dense_params / pp / (cfg.parallel.zero_stage == 1 ? dp : 1);
  const double optim_expert =
      8.0 * expert_params / ep / pp / (cfg.parallel.zero_stage == 1 ? dp / ep : 1);
  const double bytes_rank = params_rank * 4 /*fp32 weights*/ + params_rank * 4 /*fp32 grads*/ +
                            optim_dense + optim_expert;
  const double flops = model::training_flops_per_token(m, cfg.train.seq_len);
  std::printf("model %s\n", a.positional[0].c_str());
  std::printf("  total parameters      %s (%.0f)\n", human(c.total).c_str(), c.total);
  std::printf("  activated per token   %s (%.0f)\n", human(c.active).c_str(), c.active);
  std::printf("  activated w/o embed   %s\n", human(c.active - c.embedding).c_str());
  std::printf("    embedding %s, lm_head %s, attention %s, dense MLP %s\n",
              human(c.embedding).c_str(), human(c.lm_head).c_str(), human(c.attention).c_str(),
              human(c.dense_mlp).c_str());
  std::printf("    routed experts %s, shared experts %s, routers %s, norms %s\n",
              human(c.routed_experts).c_str(), human(c.shared_experts).c_str(),
              human(c.routers).c_str(), human(c.norms).c_str());
  if (m.mtp_depth > 0) {
    std::printf("  MTP modules (extra)   %s total, %s activated (embedding and head shared)\n",
                human(c.mtp_total).c_str(), human(c.mtp_active).c_str());
  }
  std::printf(
      "training FLOPs/token    %.3e (6 x activated matmul params + causal attention, seq %ld)\n",
      flops, static_cast<long>(cfg.train.seq_len));
  std::printf("layout: world %ld = pp %ld x dp %ld, ep %ld, ZeRO-%ld\n", static_cast<long>(world),
              static_cast<long>(cfg.parallel.pipeline_parallel), static_cast<long>(dp),
              static_cast<long>(ep), static_cast<long>(cfg.parallel.zero_stage));
  std::printf(
      "  per rank: %s parameters, %.1f GiB for fp32 weights + grads + AdamW state (activations "
      "extra)\n",
      human(params_rank).c_str(), bytes_rank / (1024.0 * 1024 * 1024));
  if (a.has("--json")) {
    nlohmann::json j = {{"total", c.total},         {"active", c.active},
                        {"embedding", c.embedding}, {"mtp_total", c.mtp_total},
                        {"flops_per_token", flops}, {"bytes_per_rank", bytes_rank}};
    std::printf("%s\n", j.dump().c_str());
  }
  return 0;
}

}  // namespace condensa::trainer
