#include "trainer/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/error.h"

namespace fs = std::filesystem;

namespace condensa::trainer {

// ---- CRC-32C and TFRecord framing ---------------------------------------------------------

namespace {
std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}

std::string little_endian(uint64_t v, int bytes) {
  std::string out(bytes, '\0');
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}
}  // namespace

uint32_t crc32c(std::string_view data) {
  static const std::array<uint32_t, 256> table = make_crc32c_table();
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t c = crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord(std::string_view data) {
  const std::string length = little_endian(data.size(), 8);
  std::string out = length;
  out += little_endian(masked_crc32c(length), 4);
  out += data;
  out += little_endian(masked_crc32c(data), 4);
  return out;
}

// ---- the few protobuf messages ------------------------------------------------------------

namespace {
// Protobuf wire format: key = field << 3 | wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
class ProtoWriter {
 public:
  ProtoWriter& varint_field(int field, uint64_t v) { return key(field, 0).varint(v); }
  ProtoWriter& double_field(int field, double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    key(field, 1);
    out_ += little_endian(bits, 8);
    return *this;
  }
  ProtoWriter& float_field(int field, float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    key(field, 5);
    out_ += little_endian(bits, 4);
    return *this;
  }
  ProtoWriter& bytes_field(int field, std::string_view bytes) {
    key(field, 2).varint(bytes.size());
    out_ += bytes;
    return *this;
  }
  ProtoWriter& packed_doubles(int field, const std::vector<double>& values) {
    ProtoWriter packed;
    for (double v : values) {
      uint64_t bits;
      std::memcpy(&bits, &v, 8);
      packed.out_ += little_endian(bits, 8);
    }
    return bytes_field(field, packed.out_);
  }
  const std::string& str() const { return out_; }

 private:
  ProtoWriter& key(int field, int wire_type) {
    return varint(static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire_type));
  }
  ProtoWriter& varint(uint64_t v) {
    while (v >= 0x80) {
      out_ += static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    out_ += static_cast<char>(v);
    return *this;
  }
  std::string out_;
};

// Event {double wall_time = 1; int64 step = 2; oneof {string file_version = 3;
//        Summary summary = 5; SessionLog session_log = 7;}}
ProtoWriter event_header(double wall_time, int64_t step) {
  ProtoWriter e;
  e.double_field(1, wall_time);
  e.varint_field(2, static_cast<uint64_t>(step));
  return e;
}

// Summary {repeated Value value = 1;}
// Value {string tag = 1; oneof {float simple_value = 2; HistogramProto histo = 5;}}
std::string summary_event(double wall_time, int64_t step, const std::string& value) {
  ProtoWriter summary;
  summary.bytes_field(1, value);
  return event_header(wall_time, step).bytes_field(5, summary.str()).str();
}
}  // namespace

std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  ProtoWriter v;
  v.bytes_field(1, tag).float_field(2, value);
  return summary_event(wall_time, step, v.str());
}

std::string histogram_event(double wall_time,
                            int64_t step,
                            const std::string& tag,
                            const Histogram& h) {
  // HistogramProto {double min = 1, max = 2, num = 3, sum = 4, sum_squares = 5;
  //                 repeated double bucket_limit = 6 [packed], bucket = 7 [packed];}
  ProtoWriter histo;
  histo.double_field(1, h.min).double_field(2, h.max).double_field(3, h.num);
  histo.double_field(4, h.sum).double_field(5, h.sum_squares);
  histo.packed_doubles(6, h.bucket_limit).packed_doubles(7, h.bucket);
  ProtoWriter v;
  v.bytes_field(1, tag).bytes_field(5, histo.str());
  return summary_event(wall_time, step, v.str());
}

std::string file_version_event(double wall_time) {
  return event_header(wall_time, 0).bytes_field(3, "brain.Event:2").str();
}

std::string session_start_event(double wall_time, int64_t step) {
  ProtoWriter session_log;  // SessionLog {SessionStatus status = 1;}, START = 1
  session_log.varint_field(1, 1);
  return event_header(wall_time, step).bytes_field(7, session_log.str()).str();
}

Histogram expert_histogram(const std::vector<int64_t>& counts) {
  Histogram h;
  bool any = false;
  for (size_t e = 0; e < counts.size(); ++e) {
    const double x = static_cast<double>(e), c = static_cast<double>(counts[e]);
    h.bucket_limit.push_back(x + 0.5);
    h.bucket.push_back(c);
    if (counts[e] == 0) continue;
    if (!any) h.min = x;
    h.max = x;
    any = true;
    h.num += c;
    h.sum += c * x;
    h.sum_squares += c * x * x;
  }
  return h;
}

// ---- files ----------------------------------------------------------------------------------

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// events.out.tfevents.<seconds>.<microseconds>.<host>.<pid>, later than every existing one.
std::string event_file_name(const fs::path& dir) {
  const double now = now_s();
  long long sec = static_cast<long long>(now);
  long long usec = static_cast<long long>((now - static_cast<double>(sec)) * 1e6);
  for (const auto& entry : fs::directory_iterator(dir)) {
    long long s = 0, u = 0;
    const std::string name = entry.path().filename().string();
    if (std::sscanf(name.c_str(), "events.out.tfevents.%lld.%lld.", &s, &u) == 2 &&
        (s > sec || (s == sec && u >= usec))) {
      sec = s, usec = u + 1;
    }
  }
  if (usec >= 1000000) sec += 1, usec -= 1000000;
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  char buf[512];
  std::snprintf(buf, sizeof buf, "events.out.tfevents.%010lld.%06lld.%s.%ld", sec, usec, host,
                static_cast<long>(getpid()));
  return buf;
}
}  // namespace

EventFileWriter::EventFileWriter(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  CONDENSA_CHECK(!ec, IoError, "cannot create TensorBoard directory ", dir, ": ", ec.message());
  path_ = (fs::path(dir) / event_file_name(dir)).string();
  out_.open(path_, std::ios::binary | std::ios::trunc);
  CONDENSA_CHECK(out_.good(), IoError, "cannot open TensorBoard event file ", path_, ": ",
                 std::strerror(errno));
  write(file_version_event(now_s()));
  flush();
}

void EventFileWriter::write(const std::string& event) {
  out_ << tfrecord(event);
  CONDENSA_CHECK(out_.good(), IoError, "cannot write TensorBoard event file ", path_, ": ",
                 std::strerror(errno));
}

void EventFileWriter::flush() {
  out_.flush();
  CONDENSA_CHECK(out_.good(), IoError, "cannot write TensorBoard event file ", path_, ": ",
                 std::strerror(errno));
}

TensorBoardLog::TensorBoardLog(const std::string& dir,
                               const model::ModelConfig& model,
                               int64_t first_step)
    : file_(dir), model_(model) {
  file_.write(session_start_event(now_s(), first_step));
  file_.flush();
}

void TensorBoardLog::write_step(const MetricsRecord& r) {
  const double t = now_s();
  const std::pair<const char*, double> scalars[] = {{"train/loss", r.loss},
                                                    {"train/mtp_loss", r.mtp_loss},
                                                    {"train/aux_loss", r.aux_loss},
                                                    {"train/lr", r.lr},
                                                    {"train/grad_norm", r.grad_norm},
                                                    {"perf/tokens_per_s", r.tokens_per_s},
                                                    {"perf/mfu", r.mfu}};
  for (const auto& [tag, value] : scalars)
    file_.write(scalar_event(t, r.step, tag, static_cast<float>(value)));
  double worst = 1.0;
  for (size_t i = 0; i < r.moe.size(); ++i) {
    const std::string prefix = "moe/" + moe_layer_name(model_, i) + "/";
    const double imbalance = load_imbalance(r.moe[i].tokens_per_expert);
    worst = std::max(worst, imbalance);
    file_.write(scalar_event(t, r.step, prefix + "max_mean_load", static_cast<float>(imbalance)));
    auto counts_E = r.moe[i].tokens_per_expert.to(torch::kCPU, torch::kInt64).contiguous();
    std::vector<int64_t> counts(counts_E.data_ptr<int64_t>(),
                                counts_E.data_ptr<int64_t>() + counts_E.numel());
    file_.write(histogram_event(t, r.step, prefix + "tokens_per_expert", expert_histogram(counts)));
  }
  if (!r.moe.empty())
    file_.write(scalar_event(t, r.step, "moe/max_mean_load", static_cast<float>(worst)));
  file_.flush();
}

void TensorBoardLog::write_eval(int64_t step, double val_loss) {
  file_.write(scalar_event(now_s(), step, "val/loss", static_cast<float>(val_loss)));
  file_.flush();
}

}  // namespace condensa::trainer
