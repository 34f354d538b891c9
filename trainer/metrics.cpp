#include "trainer/metrics.h"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/durable_file.h"
#include "model/accounting.h"

namespace condensa::trainer {

torch::Tensor count_tokens_by_language(const torch::Tensor& topk_idx_TK,
                                       const torch::Tensor& language_T,
                                       int64_t num_languages,
                                       int64_t num_experts) {
  torch::NoGradGuard no_grad;
  const int64_t T = topk_idx_TK.size(0), K = topk_idx_TK.size(1);
  const int64_t L = num_languages, E = num_experts;
  auto lang = language_T.to(torch::kInt64).reshape({T, 1}).expand({T, K}).reshape({-1});
  auto expert = topk_idx_TK.reshape({-1});
  auto counted = (lang >= 0) & (lang < L) & (expert >= 0);
  // Uncounted assignments go to one extra bin (no masked_select: its size needs a host sync).
  auto bin = torch::where(counted, lang * E + expert, torch::full_like(expert, L * E));
  auto counts =
      torch::zeros({L * E + 1}, expert.options()).scatter_add_(0, bin, counted.to(torch::kInt64));
  return counts.narrow(0, 0, L * E).view({L, E});
}

double load_imbalance(const torch::Tensor& load) {
  auto l = load.to(torch::kFloat64);
  double mean = l.mean().item<double>();
  return mean > 0 ? l.max().item<double>() / mean : 1.0;
}

namespace {
template <class T>
std::vector<T> to_vec(const torch::Tensor& t) {
  auto c = t.contiguous().cpu();
  std::vector<T> out(c.numel());
  auto d = c.to(std::is_same<T, double>::value ? torch::kFloat64 : torch::kInt64);
  std::memcpy(out.data(), d.data_ptr(), out.size() * sizeof(T));
  return out;
}
std::string format_duration(double s) {
  char buf[32];
  long t = static_cast<long>(s + 0.5);
  if (t >= 3600) {
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  } else {
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  }
  return buf;
}
}  // namespace

void write_metrics_line(std::ofstream& out,
                        const MetricsRecord& r,
                        const std::vector<std::string>& languages) {
  nlohmann::json j = {{"step", r.step},
                      {"loss", r.loss},
                      {"mtp_loss", r.mtp_loss},
                      {"aux_loss", r.aux_loss},
                      {"lr", r.lr},
                      {"grad_norm", r.grad_norm},
                      {"tokens_per_s", r.tokens_per_s},
                      {"mfu", r.mfu},
                      {"tokens_seen", r.tokens_seen}};
  nlohmann::json moe = nlohmann::json::array();
  double worst = 1.0;
  for (const auto& l : r.moe) {
    const double imb = load_imbalance(l.tokens_per_expert);
    worst = std::max(worst, imb);
    nlohmann::json layer = {{"tokens_per_expert", to_vec<int64_t>(l.tokens_per_expert)},
                            {"max_mean_load", imb},
                            {"bias", to_vec<double>(l.bias)}};
    if (l.languages.defined() && !languages.empty()) {
      nlohmann::json by_lang = nlohmann::json::object();
      for (int64_t i = 0; i < l.languages.size(0) && i < static_cast<int64_t>(languages.size());
           ++i) {
        by_lang[languages[i]] = to_vec<int64_t>(l.languages[i]);
      }
      layer["tokens_per_expert_by_language"] = by_lang;
    }
    moe.push_back(layer);
  }
  if (!r.moe.empty()) {
    j["moe"] = moe;
    j["max_mean_load"] = worst;
  }
  out << j.dump() << "\n";
  out.flush();
}

void write_eval_line(std::ofstream& out, int64_t step, double val_loss) {
  out << nlohmann::json{{"step", step}, {"val_loss", val_loss}}.dump() << "\n";
  out.flush();
}

void print_progress_line(const MetricsRecord& r) {
  double worst = 1.0;
  for (const auto& l : r.moe) worst = std::max(worst, load_imbalance(l.tokens_per_expert));
  std::printf("step %5ld/%ld | loss %.4f", static_cast<long>(r.step),
              static_cast<long>(r.total_steps), r.loss);
  if (r.mtp_loss > 0) std::printf(" mtp %.4f", r.mtp_loss);
  std::printf(" | lr %.2e | gnorm %.3f | %.0f tok/s | MFU %.1f%%", r.lr, r.grad_norm,
              r.tokens_per_s, 100 * r.mfu);
  if (!r.moe.empty()) std::printf(" | load max/mean %.2f", worst);
  std::printf(" | ETA %s\n", format_duration(r.eta_s).c_str());
  std::fflush(stdout);
}

void truncate_metrics_after(const std::string& path, int64_t last_step) {
  if (!std::filesystem::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      if (nlohmann::json::parse(line).value("step", int64_t(0)) > last_step) continue;
    } catch (const std::exception&) {
      continue;  // a torn last line from a crash
    }
    kept += line + "\n";
  }
  atomic_write_file(path, kept);
}

std::string moe_layer_name(const model::ModelConfig& m, size_t i) {
  const size_t main_moe = static_cast<size_t>(m.num_layers - m.num_dense_layers);
  if (i < main_moe) return "layer" + std::to_string(m.num_dense_layers + static_cast<int64_t>(i));
  return "mtp" + std::to_string(i - main_moe);
}

std::string describe_model(const model::ModelConfig& m) {
  auto counts = model::count_parameters(m);
  std::ostringstream os;
  os.precision(3);
  os << m.num_layers << " layers (" << m.num_dense_layers << " dense), d " << m.hidden_size << ", "
     << m.num_routed_experts << " experts top-" << m.top_k << " + " << m.num_shared_experts
     << " shared";
  if (m.mtp_depth > 0) os << ", MTP " << m.mtp_depth;
  os << ", " << counts.total / 1e6 << "M params (" << counts.active / 1e6 << "M active)";
  return os.str();
}

}  // namespace condensa::trainer
