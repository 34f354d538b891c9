// The run report's pieces: the heatmap color scale, escaping, the heatmap's cells and step
// binning, and render_report on a hand-written run directory (errors name the file).
#include "trainer/report.h"

#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include "common/error.h"
#include "tests/support/test_util.h"
#include "trainer/report_svg.h"

namespace condensa::trainer {
namespace {

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(Report, LoadColorScale) {
  EXPECT_EQ(load_color(1.0), "#f7f7f7");  // balanced: white
  EXPECT_EQ(load_color(4.0), "#b2182b");  // 4x the mean and above: full red
  EXPECT_EQ(load_color(100.0), "#b2182b");
  EXPECT_EQ(load_color(0.25), "#2166ac");  // a quarter and below: full blue
  EXPECT_EQ(load_color(0.0), "#2166ac");   // an expert that got nothing
  EXPECT_EQ(load_color(2.0), "#d58891");   // halfway on the log scale
}

TEST(Report, HtmlEscape) { EXPECT_EQ(html_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;"); }

TEST(Report, HeatmapHasOneCellPerStepAndExpert) {
  HeatmapInput in{"layer1", {1, 2, 3}, {{4, 0, 2, 2}, {2, 2, 2, 2}, {0, 0, 8, 0}}};
  const std::string svg = load_heatmap(in);
  EXPECT_EQ(count(svg, "<rect"), 3u * 4 + 5);  // cells + 5 legend swatches
  // Step 3 sends everything to expert 2: 4x the mean (red), the others 0 (blue).
  EXPECT_NE(svg.find("step 3, expert 2: 8 tokens (4x mean)"), std::string::npos);
  EXPECT_NE(svg.find("step 2, expert 0: 2 tokens (1x mean)"), std::string::npos);
  EXPECT_EQ(count(svg, "fill=\"#b2182b\""), 1u + 1);  // the cell + its legend swatch
}

TEST(Report, HeatmapBinsStepsBeyondMaxColumns) {
  HeatmapInput in{"layer1", {}, {}};
  for (int64_t s = 1; s <= 10; ++s) {
    in.steps.push_back(s);
    in.counts.push_back({s, 10 - s});
  }
  const std::string svg = load_heatmap(in, /*max_columns=*/4);  // 3 steps per column: 4 columns
  EXPECT_EQ(count(svg, "<rect"), 4u * 2 + 5);
  EXPECT_NE(svg.find("step 1-3, expert 0: 6 tokens"), std::string::npos);
  EXPECT_NE(svg.find("step 10, expert 1: 0 tokens"), std::string::npos);
  EXPECT_NE(svg.find("3 logged steps per column"), std::string::npos);
}

TEST(Report, LineChartWithoutDataSaysSo) {
  EXPECT_NE(line_chart("Loss", {{"loss", "#000", {}, false}}).find("no data"), std::string::npos);
  const std::string svg = line_chart("Loss", {{"loss", "#123456", {{1, 3.0}, {2, 2.5}}, false}});
  EXPECT_NE(svg.find("stroke=\"#123456\""), std::string::npos);
  EXPECT_EQ(svg.find("no data"), std::string::npos);
}

TEST(Report, RendersAHandWrittenRun) {
  testing::TempDir dir("report");
  std::ofstream(dir.path() / "metrics.jsonl")
      << R"({"step":1,"loss":5.5,"mtp_loss":0,"aux_loss":0,"lr":1e-3,"grad_norm":2,)"
      << R"("tokens_per_s":100,"mfu":0.01,"tokens_seen":64,"max_mean_load":1.5,)"
      << R"("moe":[{"tokens_per_expert":[30,10],"max_mean_load":1.5,"bias":[0,0]}]})"
      << "\n"
      << R"({"step":2,"loss":5.0,"mtp_loss":0,"aux_loss":0,"lr":1e-3,"grad_norm":1.5,)"
      << R"("tokens_per_s":110,"mfu":0.01,"tokens_seen":128,"max_mean_load":1.0,)"
      << R"("moe":[{"tokens_per_expert":[20,20],"max_mean_load":1.0,"bias":[0,0]}]})"
      << "\n"
      << R"({"step":2,"val_loss":4.75})"
      << "\n"
      << R"({"step":3,"loss":4.)";  // a torn last line of a running job is skipped
  const std::string html = render_report(dir.str());
  EXPECT_NE(html.find("<title>condensa report: " + dir.path().filename().string() + "</title>"),
            std::string::npos);
  EXPECT_EQ(count(html, "<svg"), 5u + 1);
  EXPECT_NE(html.find("4.7500 (step 2)"), std::string::npos);  // the validation loss
  EXPECT_NE(html.find("no layout.json"), std::string::npos);
  EXPECT_NE(html.find("config.yaml is missing"), std::string::npos);
  EXPECT_FALSE(std::regex_search(html, std::regex(R"((src|href)\s*=|<script)")));
}

TEST(Report, ErrorsNameTheFile) {
  testing::TempDir dir("report");
  const std::string metrics = (dir.path() / "metrics.jsonl").string();
  try {
    render_report(dir.str());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot read " + metrics), std::string::npos) << e.what();
  }
  std::ofstream(metrics) << "not json\n{\"step\":1,\"val_loss\":2}\n";
  try {
    render_report(dir.str());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(metrics + " line 1 is not JSON: not json"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace condensa::trainer
