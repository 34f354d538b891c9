// TensorBoard event files: the training curves of metrics.jsonl, written where TensorBoard
// reads them (<run.dir>/tb/events.out.tfevents.*), by rank 0.
//
// Key design choice: no protobuf or TensorFlow dependency. An event file is a TFRecord stream
// (uint64 length, masked CRC32C of the length, the record, masked CRC32C of the record) of
// serialized `Event` protos, and condensa writes only four messages (Event, Summary,
// Summary.Value with simple_value or HistogramProto, SessionLog), so a hand-written encoder
// of those few fields is shorter than the dependency. CRC32C lives here and not in
// common/checksum.h: it is part of this file format, not a checksum condensa chooses.
//
// Tags (one per curve; <layer> is moe_layer_name(): "layer3", "mtp0"):
//   train/loss, train/mtp_loss, train/aux_loss, train/lr, train/grad_norm,
//   perf/tokens_per_s, perf/mfu, val/loss, moe/max_mean_load (worst layer),
//   moe/<layer>/max_mean_load, and the histogram moe/<layer>/tokens_per_expert whose bucket e
//   (limits e - 0.5 .. e + 0.5) holds expert e's tokens of the step.
// Resuming writes a SessionLog START at the first new step: TensorBoard then drops the older
// file's events from that step on, as metrics.jsonl drops its records.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "model/model_config.h"
#include "trainer/metrics.h"

namespace condensa::trainer {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), and TFRecord's masked form
// ((crc >> 15 | crc << 17) + 0xa282ead8).
uint32_t crc32c(std::string_view data);
uint32_t masked_crc32c(std::string_view data);

// One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
std::string tfrecord(std::string_view data);

// A histogram as TensorBoard's HistogramProto holds it: bucket i counts values in
// (bucket_limit[i-1], bucket_limit[i]].
struct Histogram {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> bucket_limit, bucket;
};
// The histogram of expert indices over the routed tokens: bucket e holds counts[e].
Histogram expert_histogram(const std::vector<int64_t>& counts);

// Serialized Event protos (wall_time in seconds since the epoch).
std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
std::string histogram_event(double wall_time,
                            int64_t step,
                            const std::string& tag,
                            const Histogram& h);
std::string file_version_event(double wall_time);
std::string session_start_event(double wall_time, int64_t step);

// Appends events to one new event file in `dir` (created if needed). The file name sorts
// after every event file already there, so TensorBoard reads a resumed run's files in order.
class EventFileWriter {
 public:
  explicit EventFileWriter(const std::string& dir);
  const std::string& path() const { return path_; }
  void write(const std::string& event);  // one serialized Event
  void flush();

 private:
  std::string path_;
  std::ofstream out_;
};

// The run's TensorBoard log: the same records as metrics.jsonl.
class TensorBoardLog {
 public:
  // `first_step`: the first step this process trains (resumed step + 1).
  TensorBoardLog(const std::string& dir, const model::ModelConfig& model, int64_t first_step);
  void write_step(const MetricsRecord& rec);
  void write_eval(int64_t step, double val_loss);
  const std::string& path() const { return file_.path(); }

 private:
  EventFileWriter file_;
  model::ModelConfig model_;
};

}  // namespace condensa::trainer
