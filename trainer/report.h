// The run report: one self-contained HTML page (inline SVG and CSS, no script, nothing fetched
// from the network) that shows a run directory as a person wants to see it: the loss and
// validation curves, learning rate, gradient norm, throughput, the expert load per MoE layer
// as a heatmap of tokens per expert per step, and the configuration and layout.
//
// Key design choice: the report reads only what the trainer already writes to the run
// directory (metrics.jsonl, config.yaml, layout.json), so it works on a finished run, a
// running one, or a copy of the directory on a laptop, with nothing but the condensa binary.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "parallel/mesh.h"
#include "trainer/config/config.h"

namespace condensa::trainer {

// <run.dir>/layout.json, written by the trainer at start: world size, pp/dp/ep/edp, nodes,
// ZeRO stage, backend and device of the run.
nlohmann::json layout_json(const parallel::Mesh& mesh,
                           const Config& cfg,
                           const std::string& device);

// The report page of the run in `run_dir`. Throws condensa::Error naming the file when
// metrics.jsonl is missing, unreadable or holds no training record.
std::string render_report(const std::string& run_dir);

}  // namespace condensa::trainer
