#include "trainer/report.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/durable_file.h"
#include "common/error.h"
#include "trainer/config/yaml.h"
#include "trainer/metrics.h"
#include "trainer/report_svg.h"

namespace fs = std::filesystem;

namespace condensa::trainer {

nlohmann::json layout_json(const parallel::Mesh& mesh,
                           const Config& cfg,
                           const std::string& device) {
  return {{"world_size", mesh.world_size()},
          {"pipeline_parallel", mesh.pp_size()},
          {"data_parallel", mesh.dp_size()},
          {"expert_parallel", mesh.ep_size()},
          {"expert_data_parallel", mesh.edp_size()},
          {"nodes", mesh.num_nodes()},
          {"zero_stage", cfg.parallel.zero_stage},
          {"backend", cfg.parallel.backend},
          {"device", device},
          {"mesh", mesh.describe()}};
}

namespace {

// What the report shows, read from the run directory.
struct RunData {
  std::string name;                      // the run directory's name
  std::string config_yaml;               // "" when config.yaml is missing
  std::string model;                     // describe_model(), "" without a readable config
  size_t num_moe_layers = 0;             // entries of the last record's "moe" list
  std::vector<std::string> layer_names;  // their names; empty without a readable config
  nlohmann::json layout;                 // null when layout.json is missing
  std::vector<nlohmann::json> train, eval;
};

std::vector<nlohmann::json> read_records(const fs::path& path) {
  std::ifstream in(path);
  CONDENSA_CHECK(in.good(), Error, "report: cannot read ", path.string(),
                 " (not a run directory? condensa train writes it)");
  std::vector<nlohmann::json> out;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    try {
      out.push_back(nlohmann::json::parse(line));
    } catch (const std::exception&) {
      if (in.peek() == EOF) break;  // a torn last line of a running or crashed job
      throw Error(
          str("report: ", path.string(), " line ", line_no, " is not JSON: ", line.substr(0, 80)));
    }
  }
  return out;
}

RunData read_run(const std::string& run_dir) {
  RunData d;
  const fs::path dir(run_dir);
  d.name = fs::absolute(dir).lexically_normal().filename().string();
  if (d.name.empty())
    d.name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  for (auto& r : read_records(dir / "metrics.jsonl")) {
    if (r.contains("loss")) {
      d.train.push_back(std::move(r));
    } else if (r.contains("val_loss")) {
      d.eval.push_back(std::move(r));
    }
  }
  CONDENSA_CHECK(!d.train.empty(), Error, "report: ", (dir / "metrics.jsonl").string(),
                 " holds no training record yet");
  d.num_moe_layers = d.train.back().value("moe", nlohmann::json::array()).size();
  if (fs::exists(dir / "config.yaml")) {
    d.config_yaml = read_file((dir / "config.yaml").string());
    try {
      const Config cfg = parse_config_text(d.config_yaml, {}, (dir / "config.yaml").string());
      d.model = describe_model(cfg.model);
      for (size_t i = 0; i < d.num_moe_layers; ++i)
        d.layer_names.push_back(moe_layer_name(cfg.model, i));
    } catch (const Error& e) {
      std::fprintf(stderr, "report: warning: config.yaml not readable by this build (%s)\n",
                   e.what());
    }
  }
  if (fs::exists(dir / "layout.json"))
    d.layout = nlohmann::json::parse(read_file((dir / "layout.json").string()));
  return d;
}

std::string layer_name(const RunData& d, size_t i) {
  return i < d.layer_names.size() ? d.layer_names[i] : "moe" + std::to_string(i);
}

ChartSeries series_of(const std::vector<nlohmann::json>& records,
                      const std::string& key,
                      const std::string& name,
                      const std::string& color) {
  ChartSeries s{name, color, {}, false};
  for (const auto& r : records) {
    if (r.contains(key) && r[key].is_number())
      s.points.emplace_back(r["step"].get<double>(), r[key].get<double>());
  }
  return s;
}

const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                          "#ff7f0e", "#17becf", "#8c564b", "#e377c2"};

// The curves: loss + validation, lr, grad norm, tokens/s, load imbalance per MoE layer.
std::string curves_section(const RunData& d) {
  std::ostringstream os;
  auto loss = series_of(d.train, "loss", "train loss", "#1f77b4");
  auto val = series_of(d.eval, "val_loss", "validation loss", "#d62728");
  val.markers = true;
  std::vector<ChartSeries> losses = {loss, val};
  auto mtp = series_of(d.train, "mtp_loss", "MTP loss", "#2ca02c");
  bool any_mtp = false;
  for (const auto& p : mtp.points) any_mtp = any_mtp || p.second != 0;
  if (any_mtp) losses.push_back(mtp);
  os << "<h2>Training</h2><div class=\"charts\">";
  os << line_chart("Loss", losses);
  os << line_chart("Learning rate", {series_of(d.train, "lr", "lr", "#9467bd")});
  os << line_chart("Gradient norm (before clipping)",
                   {series_of(d.train, "grad_norm", "grad norm", "#ff7f0e")}, true);
  os << line_chart("Throughput (tokens/s, all ranks)",
                   {series_of(d.train, "tokens_per_s", "tokens/s", "#17becf")});
  std::vector<ChartSeries> load;
  for (size_t i = 0; i < d.num_moe_layers; ++i) {
    ChartSeries s{layer_name(d, i), kPalette[i % 8], {}, false};
    for (const auto& r : d.train) {
      if (r.contains("moe") && i < r["moe"].size())
        s.points.emplace_back(r["step"].get<double>(), r["moe"][i]["max_mean_load"].get<double>());
    }
    load.push_back(std::move(s));
  }
  if (!load.empty())
    os << line_chart("Expert load: max / mean tokens per expert (1 = balanced)", load);
  os << "</div>";
  return os.str();
}

std::string heatmap_section(const RunData& d) {
  if (d.num_moe_layers == 0) return "";
  std::ostringstream os;
  os << "<h2>Tokens per expert per step</h2><p class=\"note\">Each cell is one expert's share "
        "of a logged step's routed tokens relative to the mean over experts (global, all "
        "ranks): white is balanced, red above the mean, blue below. A routing collapse shows "
        "as a few red rows over blue.</p>";
  for (size_t i = 0; i < d.num_moe_layers; ++i) {
    HeatmapInput in;
    const std::string name = layer_name(d, i);
    in.title = "MoE " + name + ": tokens per expert";
    for (const auto& r : d.train) {
      if (!r.contains("moe") || i >= r["moe"].size()) continue;
      auto counts = r["moe"][i]["tokens_per_expert"].get<std::vector<int64_t>>();
      // A resumed run with another number of experts: the heatmap shows the later ones.
      if (!in.counts.empty() && counts.size() != in.counts.back().size())
        in.steps.clear(), in.counts.clear();
      in.steps.push_back(r["step"].get<int64_t>());
      in.counts.push_back(std::move(counts));
    }
    os << "<div class=\"heatmap\">" << load_heatmap(in) << "</div>";
  }
  return os.str();
}

std::string summary_section(const RunData& d) {
  const auto& last = d.train.back();
  std::ostringstream os;
  char buf[256];
  os << "<table class=\"summary\">";
  auto row = [&](const std::string& k, const std::string& v) {
    os << "<tr><th>" << html_escape(k) << "</th><td>" << html_escape(v) << "</td></tr>";
  };
  if (!d.model.empty()) row("model", d.model);
  row("last logged step", std::to_string(last.value("step", int64_t(0))));
  std::snprintf(buf, sizeof buf, "%.4f", last.value("loss", 0.0));
  row("train loss", buf);
  if (!d.eval.empty()) {
    std::snprintf(buf, sizeof buf, "%.4f (step %ld)", d.eval.back().value("val_loss", 0.0),
                  static_cast<long>(d.eval.back().value("step", int64_t(0))));
    row("validation loss", buf);
  }
  std::snprintf(buf, sizeof buf, "%.0f tokens/s, MFU %.2f%%", last.value("tokens_per_s", 0.0),
                100 * last.value("mfu", 0.0));
  row("throughput (last step)", buf);
  row("tokens seen", std::to_string(last.value("tokens_seen", int64_t(0))));
  if (!d.layout.is_null()) {
    row("layout",
        str("world ", d.layout.value("world_size", 0), " = ", d.layout.value("mesh", std::string()),
            ", ZeRO-", d.layout.value("zero_stage", 0)));
    row("backend / device",
        d.layout.value("backend", std::string()) + " / " + d.layout.value("device", std::string()));
  } else {
    row("layout", "unknown (no layout.json in the run directory)");
  }
  os << "</table>";
  return os.str();
}

const char* kStyle = R"(
body { font-family: sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg { background: #fff; border: 1px solid #ddd; font-size: 11px; }
.chart-title { font-size: 13px; font-weight: bold; fill: #222; }
.axis text, .legend { fill: #444; } .grid { stroke: #eee; }
.frame { fill: none; stroke: #999; } .swatch { stroke: #999; }
table.summary th { text-align: left; padding-right: 16px; font-weight: normal; color: #555; }
pre { background: #f6f6f6; padding: 8px; font-size: 12px; max-height: 480px; overflow: auto; }
.note { color: #555; font-size: 13px; max-width: 900px; } .heatmap { margin-bottom: 12px; }
)";

}  // namespace

std::string render_report(const std::string& run_dir) {
  const RunData d = read_run(run_dir);
  std::ostringstream os;
  os << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
     << "<title>condensa report: " << html_escape(d.name) << "</title><style>" << kStyle
     << "</style></head><body>"
     << "<h1>condensa report: " << html_escape(d.name) << "</h1>" << summary_section(d)
     << curves_section(d) << heatmap_section(d) << "<h2>Layout</h2>";
  if (d.layout.is_null()) {
    os << "<p class=\"note\">layout.json is missing (runs before this file was written).</p>";
  } else {
    os << "<pre>" << html_escape(d.layout.dump(2)) << "</pre>";
  }
  os << "<h2>Configuration</h2>";
  if (d.config_yaml.empty()) {
    os << "<p class=\"note\">config.yaml is missing.</p>";
  } else {
    os << "<pre>" << html_escape(d.config_yaml) << "</pre>";
  }
  os << "</body></html>\n";
  return os.str();
}

}  // namespace condensa::trainer
