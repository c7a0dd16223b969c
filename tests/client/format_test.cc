// Pure formatting: progress bar, event lines, tables, names and numbers.
#include "client/format.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace compress::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

v1::Progress MakeProgress(const std::string& stage, int64_t done, int64_t total,
                          double eta) {
  v1::Progress p;
  p.set_stage(stage);
  p.set_done(done);
  p.set_total(total);
  p.set_eta_seconds(eta);
  return p;
}

TEST(ProgressBarTest, FillsTheDoneFraction) {
  EXPECT_EQ(RenderProgressBar(MakeProgress("stage", 20, 40, 3), 10),
            "[#####.....] stage 20/40 ETA 3s");
  EXPECT_EQ(RenderProgressBar(MakeProgress("hessian", 12, 40, 65.4), 10),
            "[###.......] hessian 12/40 ETA 1m05s");
  EXPECT_EQ(RenderProgressBar(MakeProgress("s", 0, 40, -1), 4),
            "[....] s 0/40");
  EXPECT_EQ(RenderProgressBar(MakeProgress("s", 40, 40, 0), 4),
            "[####] s 40/40 ETA 0s");
}

TEST(ProgressBarTest, ClampsAndHandlesUnknownTotals) {
  EXPECT_EQ(RenderProgressBar(MakeProgress("s", 99, 40, -1), 4),
            "[####] s 99/40");
  EXPECT_EQ(RenderProgressBar(MakeProgress("s", -5, 40, -1), 4),
            "[....] s -5/40");
  EXPECT_EQ(RenderProgressBar(MakeProgress("calib", 7, 0, -1), 4),
            "[....] calib 7");
  EXPECT_EQ(RenderProgressBar(MakeProgress("", 0, 0, -1), 3), "[...]");
  EXPECT_EQ(RenderProgressBar(MakeProgress("s", 1, 2, -1), 0), "[.] s 1/2");
}

TEST(FormatEtaTest, Units) {
  EXPECT_EQ(FormatEta(-1), "");
  EXPECT_EQ(FormatEta(0.4), "0s");
  EXPECT_EQ(FormatEta(59.4), "59s");
  EXPECT_EQ(FormatEta(59.6), "1m00s");
  EXPECT_EQ(FormatEta(3599), "59m59s");
  EXPECT_EQ(FormatEta(7380), "2h03m");
}

TEST(EventLineTest, OneLinePerKind) {
  v1::JobEvent e;
  e.mutable_stage_start()->set_stage("hessian");
  e.mutable_stage_start()->set_index(1);
  e.mutable_stage_start()->set_count(4);
  EXPECT_EQ(FormatEventLine(e), "stage hessian started (2/4)");

  e.mutable_stage_end()->set_stage("hessian");
  e.mutable_stage_end()->set_seconds(1.25);
  EXPECT_EQ(FormatEventLine(e), "stage hessian finished in 1.2s");

  *e.mutable_progress() = MakeProgress("hessian", 12, 40, -1);
  EXPECT_EQ(FormatEventLine(e), "progress hessian 12/40");
  e.mutable_progress()->set_eta_seconds(3);
  EXPECT_EQ(FormatEventLine(e), "progress hessian 12/40 ETA 3s");

  e.mutable_log()->set_level("WARNING");
  e.mutable_log()->set_message("falling back to Fisher");
  EXPECT_EQ(FormatEventLine(e), "[WARNING] falling back to Fisher");

  e.mutable_artifact_ready()->set_name("report.json");
  e.mutable_artifact_ready()->set_size_bytes(123);
  EXPECT_EQ(FormatEventLine(e), "artifact report.json (123 bytes)");

  e.mutable_partial_result()->set_key("trace/fc1");
  e.mutable_partial_result()->set_json("{\"mean\":1.5}");
  EXPECT_EQ(FormatEventLine(e), "result trace/fc1 {\"mean\":1.5}");

  e.mutable_state_change()->set_from(v1::JOB_STATE_RUNNING);
  e.mutable_state_change()->set_to(v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(FormatEventLine(e), "state RUNNING -> SUCCEEDED");

  e.mutable_state_change()->set_from(v1::JOB_STATE_QUEUED);
  e.mutable_state_change()->set_to(v1::JOB_STATE_RUNNING);
  e.mutable_state_change()->set_device("cpu");
  EXPECT_EQ(FormatEventLine(e), "state QUEUED -> RUNNING on cpu");

  e.mutable_state_change()->set_from(v1::JOB_STATE_RUNNING);
  e.mutable_state_change()->set_to(v1::JOB_STATE_FAILED);
  e.mutable_state_change()->mutable_error()->set_code(9);
  e.mutable_state_change()->mutable_error()->set_message("no double backward");
  EXPECT_EQ(FormatEventLine(e),
            "state RUNNING -> FAILED: FAILED_PRECONDITION: no double backward");
}

TEST(EventPrinterTest, TtyRedrawsOneLineAndPrintsOthersAbove) {
  std::ostringstream out;
  EventPrinter printer(&out, EventPrinter::Mode::kTty, 4);
  v1::JobEvent e;
  e.mutable_stage_start()->set_stage("s");
  printer.Print(e);
  *e.mutable_progress() = MakeProgress("s", 1, 2, -1);
  printer.Print(e);
  e.mutable_log()->set_message("hi");
  printer.Print(e);
  e.mutable_state_change()->set_from(v1::JOB_STATE_RUNNING);
  e.mutable_state_change()->set_to(v1::JOB_STATE_SUCCEEDED);
  printer.Print(e);
  printer.Finish();
  EXPECT_EQ(out.str(),
            "stage s started\n"
            "\r[....] s\x1b[K"
            "\r[##..] s 1/2\x1b[K"
            "\r\x1b[K[INFO] hi\n"
            "\r[##..] s 1/2\x1b[K"
            "\r\x1b[Kstate RUNNING -> SUCCEEDED\n");
}

TEST(EventPrinterTest, PlainAndJsonPrintOneLinePerEvent) {
  v1::JobEvent e;
  e.set_sequence(3);
  *e.mutable_progress() = MakeProgress("s", 1, 2, -1);
  std::ostringstream plain;
  EventPrinter(&plain, EventPrinter::Mode::kPlain).Print(e);
  EXPECT_EQ(plain.str(), "progress s 1/2\n");
  std::ostringstream json;
  EventPrinter(&json, EventPrinter::Mode::kJson).Print(e);
  EXPECT_EQ(json.str(),
            "{\"sequence\":\"3\",\"progress\":{\"stage\":\"s\",\"done\":\"1\","
            "\"total\":\"2\",\"eta_seconds\":-1}}\n");
}

TEST(TableTest, AlignsColumnsWithoutTrailingBlanks) {
  EXPECT_EQ(FormatTable({{"ID"}, {"SIZE", true}, {"NAME"}},
                        {{"abc", "1", "x"}, {"a", "1234", ""}}),
            "ID   SIZE  NAME\n"
            "abc     1  x\n"
            "a    1234\n");
}

TEST(KeyValuesTest, AlignsValues) {
  EXPECT_EQ(FormatKeyValues({{"id", "1"}, {"created", "now"}}),
            "id:      1\n"
            "created: now\n");
}

TEST(NamesTest, StatesKindsAndCodes) {
  EXPECT_EQ(StateName(v1::JOB_STATE_CANCELLED), "CANCELLED");
  EXPECT_EQ(KindName(v1::JOB_KIND_INSPECT), "INSPECT");
  EXPECT_EQ(*ParseJobState("running"), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(*ParseJobState("JOB_STATE_FAILED"), v1::JOB_STATE_FAILED);
  EXPECT_EQ(*ParseJobKind("Quantize"), v1::JOB_KIND_QUANTIZE);
  EXPECT_FALSE(ParseJobState("unspecified").ok());
  EXPECT_THAT(ParseJobState("done").status().message(),
              HasSubstr("queued, running, succeeded, failed, cancelled"));
  EXPECT_EQ(StatusCodeName(5), "NOT_FOUND");
  EXPECT_EQ(StatusCodeName(99), "99");
}

// Job ids share "job-" and the submit time in their first 12 characters
// (issue 19): a table shows each the shortest prefix no other row shares.
TEST(UniqueShortIdsTest, LongEnoughToTellRowsApart) {
  const std::vector<std::string> ids = {
      "job-00693f6a1c0123456789abcdef", "job-00693f6a1c0123ff00000000",
      "job-00693f6a1d77777777777777", "0123456789abcdef0123", "builtin:fashion-mnist/test",
      "short"};
  const std::vector<std::string> got = UniqueShortIds(ids);
  EXPECT_EQ(got[0], "job-00693f6a1c01234");  // shares "job-00693f6a1c0123" with the next
  EXPECT_EQ(got[1], "job-00693f6a1c0123f");
  EXPECT_EQ(got[2], "job-00693f6a1d");
  EXPECT_EQ(got[3], "0123456789ab");  // nothing shares its first 12
  EXPECT_EQ(got[4], "builtin:fashion-mnist/test");
  EXPECT_EQ(got[5], "short");
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_TRUE(absl::StartsWith(ids[i], got[i])) << got[i];
    for (size_t j = 0; j < ids.size(); ++j) {
      if (j != i) {
        EXPECT_FALSE(absl::StartsWith(ids[j], got[i])) << got[i] << " vs " << ids[j];
      }
    }
  }
  // The same id twice (a model listed twice, say) is not ambiguous.
  EXPECT_EQ(UniqueShortIds({ids[3], ids[3]}),
            (std::vector<std::string>{"0123456789ab", "0123456789ab"}));
}

TEST(JobTableTest, ShowsTheModelByNameAndUniqueIds) {
  v1::Job a;
  a.set_id("job-00693f6a1c0123456789abcdef");
  a.set_kind(v1::JOB_KIND_QUANTIZE);
  a.set_state(v1::JOB_STATE_SUCCEEDED);
  a.mutable_spec()->mutable_quantize()->set_model_id(std::string(64, 'a'));
  v1::Job b;
  b.set_id("job-00693f6a1c01234567ffffffff");
  b.set_kind(v1::JOB_KIND_INSPECT);
  b.set_state(v1::JOB_STATE_QUEUED);
  b.mutable_spec()->mutable_inspect()->set_model_id(std::string(64, 'b'));
  EXPECT_EQ(SpecModelId(a.spec()), std::string(64, 'a'));
  EXPECT_EQ(SpecModelId(v1::JobSpec()), "");
  const std::map<std::string, std::string> names = {{std::string(64, 'a'), "resnet.pt"}};
  const std::string table = FormatJobTable({a, b}, &names);
  EXPECT_THAT(table, HasSubstr("MODEL"));
  EXPECT_THAT(table, HasSubstr("job-00693f6a1c012345678 "));
  EXPECT_THAT(table, HasSubstr("job-00693f6a1c01234567f "));
  EXPECT_THAT(table, HasSubstr("resnet.pt"));
  EXPECT_THAT(table, HasSubstr("bbbbbbbbbbbb "));  // no name known: the short id
}

TEST(EventLineTest, TheFirstStateHasNoArrow) {
  v1::JobEvent e;
  e.mutable_state_change()->set_to(v1::JOB_STATE_QUEUED);
  EXPECT_EQ(FormatEventLine(e), "state QUEUED");
}

TEST(NumbersTest, IdsSizesCounts) {
  EXPECT_EQ(ShortId("0123456789abcdef0123"), "0123456789ab");
  EXPECT_EQ(ShortId("short"), "short");
  EXPECT_EQ(ShortId("builtin:fashion-mnist/test"),
            "builtin:fashion-mnist/test");
  EXPECT_EQ(HumanBytes(512), "512 B");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(3 << 20), "3.0 MiB");
  EXPECT_EQ(HumanCount(950), "950");
  EXPECT_EQ(HumanCount(12345), "12.3K");
  EXPECT_EQ(HumanCount(4560000), "4.56M");
  EXPECT_EQ(WithCommas(0), "0");
  EXPECT_EQ(WithCommas(999), "999");
  EXPECT_EQ(WithCommas(1234567), "1,234,567");
  EXPECT_EQ(WithCommas(-1000), "-1,000");
  EXPECT_EQ(FormatShape(std::vector<int64_t>{1, 1, 28, 28}), "[1,1,28,28]");
  google::protobuf::Timestamp t;
  EXPECT_EQ(FormatTimestamp(t), "-");
  t.set_seconds(1714564803);
  EXPECT_EQ(FormatTimestamp(t), "2024-05-01 12:00:03 UTC");
}

TEST(InspectResultTest, PerLayerTableAndTotals) {
  v1::InspectResult r;
  for (int64_t d : {1, 1, 28, 28}) r.add_input_shape(d);
  for (int64_t d : {1, 10}) r.add_output_shape(d);
  r.set_num_parameters(7850 + 80);
  r.set_model_bytes(31720);
  r.set_total_macs(7840 + 56448);
  r.set_forward_seconds(0.00125);
  v1::LayerInspection* conv = r.add_layers();
  conv->set_name("conv");
  conv->set_kind("Conv2d");
  conv->set_numel(80);
  conv->set_macs(56448);
  for (int64_t d : {1, 8, 28, 28}) conv->add_output_shape(d);
  v1::LayerInspection* fc = r.add_layers();
  fc->set_name("fc");
  fc->set_kind("Linear");
  fc->set_numel(7850);
  fc->set_macs(7840);
  fc->set_calls(2);
  for (int64_t d : {1, 10}) fc->add_output_shape(d);
  EXPECT_EQ(FormatInspectResult(r),
            "LAYER  KIND       PARAMS    MACS  OUTPUT\n"
            "conv   Conv2d         80  56,448  [1,8,28,28]\n"
            "fc     Linear x2   7,850   7,840  [1,10]\n"
            "total              7,930  64,288  [1,10]\n"
            "\n"
            "2 layers, 7.9K parameters (31.0 KiB), 64.3K MACs\n"
            "input [1,1,28,28] -> output [1,10], forward 1.25 ms\n");
}

// A tied tensor (a GPT's head = its embedding) is named once under the
// table, and the alias's shape says which name it is; the PRUNE verdict of
// the upload is shown with its reason.
TEST(ModelTest, TiedParametersAndPruneVerdict) {
  v1::Model m;
  m.set_id("abc");
  m.set_num_parameters(3312);
  v1::Layer* head = m.add_layers();
  head->set_name("head");
  head->set_kind("Linear");
  v1::ParameterInfo* w = head->add_parameters();
  w->set_name("head.weight");
  w->add_shape(64);
  w->add_shape(16);
  w->set_tied_to("embed.weight");
  v1::TiedParameter* t = m.add_tied_parameters();
  t->set_name("embed.weight");
  t->add_aliases("head.weight");
  m.mutable_prune_check()->set_checked(true);
  m.mutable_prune_check()->set_reason("not a Vision Transformer: no block");
  const std::string out = FormatModel(m);
  EXPECT_THAT(out, HasSubstr("weight[64,16]=embed.weight"));
  EXPECT_THAT(out, HasSubstr("\ntied: embed.weight = head.weight (one tensor, counted once)"));
  EXPECT_THAT(out, HasSubstr("\nprune: refused, not a Vision Transformer: no block\n"));
  EXPECT_EQ(out.back(), '\n');

  v1::InspectResult r;
  *r.mutable_tied_parameters() = m.tied_parameters();
  EXPECT_THAT(FormatInspectResult(r),
              HasSubstr("MACs\ntied: embed.weight = head.weight (one tensor, counted once)\n"));

  v1::AnalyzeResult a;
  v1::LayerSensitivity* embed = a.add_layers();
  embed->set_name("embed");
  embed->add_tied("head.weight");
  EXPECT_THAT(FormatAnalyzeResult(a),
              HasSubstr("\ntied: embed also holds head.weight (one tensor: its Hessian sums"));
  v1::QuantizeResult q;
  v1::QuantizedLayer* hidden = q.add_layers();
  hidden->set_name("hidden1");
  hidden->add_tied("hidden2");
  EXPECT_THAT(FormatQuantizeResult(q),
              HasSubstr("\ntied: hidden1 is also hidden2's weight (quantized and stored once)\n"));
}

TEST(AnalyzeResultTest, SpectrumOutliersRowAndLowerBoundHint) {
  v1::AnalyzeResult a;
  a.add_eigenvalues(40.5);
  v1::SpectrumOutliers* so = a.mutable_spectrum_outliers();
  so->add_outliers(40.5);
  so->add_outliers(-3.25);
  so->set_count(2);
  so->set_num_classes(10);
  so->set_bulk_min(-0.5);
  so->set_bulk_max(1.25);
  so->set_bulk_width(1.75);
  std::string out = FormatAnalyzeResult(a);
  EXPECT_THAT(out, HasSubstr("OUTLIERS  CLASSES"));
  EXPECT_THAT(out, HasSubstr("2       10  [-0.5, 1.25]   1.75  40.5 -3.25\n"));
  EXPECT_THAT(out, Not(HasSubstr("ask for a larger")));
  so->set_count_is_lower_bound(true);
  out = FormatAnalyzeResult(a);
  EXPECT_THAT(out, HasSubstr(">= 2"));
  EXPECT_THAT(out, HasSubstr("\nthe top eigenvalues did not reach the bulk: ask for a larger --eigen K\n"));
}

TEST(QuantizeResultTest, PerLayerTableTotalsAndBaselines) {
  v1::QuantizeResult r;
  auto add_layer = [&r](const std::string& name, const std::string& kind, int64_t numel, int bits,
                        bool pinned, int64_t after, const std::string& rounding) {
    v1::QuantizedLayer* l = r.add_layers();
    l->set_name(name);
    l->set_kind(kind);
    l->set_numel(numel);
    l->set_bits(bits);
    l->set_pinned(pinned);
    l->set_bytes_before(4 * numel);
    l->set_bytes_after(after);
    l->set_rounding(rounding);
    (*l->mutable_omega())[2] = 0.5;
    (*l->mutable_omega())[4] = 0.025;
    (*l->mutable_omega())[8] = 0.0001;
    l->set_gptq_error(std::nan(""));
    l->set_rtn_error(std::nan(""));
    return l;
  };
  add_layer("conv1", "Conv2d", 288, 8, true, 352, "gptq")->set_gptq_error(0.01);
  r.mutable_layers(0)->set_rtn_error(0.04);
  add_layer("conv2", "Conv2d", 18432, 4, false, 9344, "gptq");
  r.mutable_layers(1)->set_gptq_error(0.05);
  r.mutable_layers(1)->set_rtn_error(0.1);
  add_layer("fc", "Linear", 1280, 32, false, 5120, "float")->set_note("");
  r.set_search("exact");
  r.set_search_exact(true);
  r.set_budget_met(true);
  r.set_tolerance_met(true);
  r.set_average_bits(5.85);
  r.set_bytes_before(80000);
  r.set_bytes_after(16000);
  r.set_predicted_bytes(15900);
  r.set_accuracy_before(92.23);
  r.set_accuracy_after(92.01);
  r.set_eval_examples(1000);
  r.set_sensitivity_source("computed");
  r.set_hvp_count(1200);
  v1::QuantBaseline* uniform = r.add_baselines();
  uniform->set_name("uniform");
  uniform->set_average_bits(4);
  uniform->set_weight_bytes(10000);
  uniform->set_cost(1.25);
  uniform->set_accuracy(90.5);
  uniform->set_chosen_only_correct(57);
  uniform->set_baseline_only_correct(43);
  uniform->set_p_value(0.19334790449564246);  // McNemarExactP(57, 43)
  v1::QuantBaseline* no_hessian = r.add_baselines();
  no_hessian->set_name("no_hessian");
  no_hessian->set_average_bits(5.5);
  no_hessian->set_weight_bytes(15000);
  no_hessian->set_cost(0.5);
  EXPECT_EQ(FormatQuantizeResult(r),
            "LAYER  KIND    PARAMS    BITS   OMEGA      WEIGHT BYTES  ROUNDING  GPTQ/RTN\n"
            "conv1  Conv2d     288      8*  0.0001      1,152 -> 352  gptq         0.250\n"
            "conv2  Conv2d  18,432      4    0.025   73,728 -> 9,344  gptq         0.500\n"
            "fc     Linear   1,280  float        -    5,120 -> 5,120  float            -\n"
            "total          20,000    5.85          80,000 -> 14,816\n"
            "* pinned\n"
            "\n"
            "size:         80,000 -> 16,000 bytes (5.0x)\n"
            "average bits: 5.85 (search exact)\n"
            "top-1:        92.23% -> 92.01% (drop 0.22 pp) on 1,000 examples\n"
            "budget met:   yes\n"
            "sensitivity:  computed (1,200 HVPs)\n"
            "\n"
            "ALLOCATION  AVG BITS   BYTES  SUM OMEGA   TOP-1            PAIRED\n"
            "chosen          5.85  15,900     0.0251  92.01%                 -\n"
            "uniform         4.00  10,000       1.25  90.50%  57 / 43 (p 0.19)\n"
            "no_hessian      5.50  15,000        0.5       -                 -\n"
            "paired: eval examples only the chosen allocation / only that one gets right; "
            "p: McNemar's exact test\n");

  // Round-to-nearest everywhere: no GPTQ column; bisection shows the
  // tolerance flag.
  for (v1::QuantizedLayer& l : *r.mutable_layers()) l.set_rounding("rtn");
  r.set_search("bisection");
  r.set_tolerance_met(false);
  r.clear_baselines();
  const std::string text = FormatQuantizeResult(r);
  EXPECT_THAT(text,
              HasSubstr("LAYER  KIND    PARAMS    BITS   OMEGA      WEIGHT BYTES  ROUNDING\n"));
  EXPECT_THAT(text, HasSubstr("tolerance met: NO\n"));
  EXPECT_THAT(text, Not(HasSubstr("ALLOCATION")));

  // Which Ω priced which rounding error.
  r.set_omega("quadratic");
  r.set_perturbation("gptq");
  r.set_hvp_count(24);
  EXPECT_THAT(FormatQuantizeResult(r),
              HasSubstr("sensitivity:   computed, quadratic Ω of the gptq rounding error (24 "
                        "HVPs)\n"));
}

// The latency line prints a speed-up only from an A/B comparison the
// server judged reliable (issue 19: 6.61x and 0.76x for one cut).
TEST(PruneResultTest, LatencyRatioOnlyFromAReliableComparison) {
  v1::PruneResult r;
  r.set_latency_batch(64);
  r.set_latency_before_ms(30.0);
  r.set_latency_after_ms(12.0);
  r.set_predicted_latency_after_ms(11.5);
  EXPECT_THAT(FormatPruneResult(r),
              HasSubstr("30.00 -> 12.00 ms at batch 64 (no A/B comparison; predicted 11.50 ms)"));
  v1::LatencyComparison* c = r.mutable_latency_comparison();
  c->set_pairs(9);
  c->set_speedup(2.5);
  c->set_speedup_q1(2.4);
  c->set_speedup_q3(2.6);
  c->set_reliable(true);
  EXPECT_THAT(FormatPruneResult(r), HasSubstr("at batch 64 (2.50x; predicted 11.50 ms)"));
  c->set_reliable(false);
  c->set_reason("timings too noisy: the middle half of 9 paired ratios spans 1.15x to 5.21x");
  const std::string text = FormatPruneResult(r);
  EXPECT_THAT(text, HasSubstr("(speed-up unreliable: timings too noisy: the middle half of 9 "
                              "paired ratios spans 1.15x to 5.21x; predicted 11.50 ms)"));
  EXPECT_THAT(text, Not(HasSubstr("2.50x")));
}

TEST(ToJsonTest, UsesProtoFieldNames) {
  v1::InspectSpec spec;
  spec.set_model_id("m");
  EXPECT_EQ(ToJson(spec), "{\"model_id\":\"m\"}");
}

// A name, id or message from the server can hold newlines, ESC and bytes
// that are not UTF-8; printed raw they forge table rows or drive the
// terminal. Every human format escapes them; JSON escapes them its own way.
TEST(HostileTextTest, TablesKeepOneRowPerItem) {
  v1::Dataset forged;
  forged.set_id(std::string(64, 'a'));
  forged.set_name("x\nbbbbbbbbbbbb  evil.pt  SAFETENSORS  1 KiB");
  v1::Dataset esc;
  esc.set_id(std::string(64, 'c'));
  esc.set_name("\x1b[2J\x1b]0;pwned\x07name\xff");
  const std::string table = FormatDatasetTable({forged, esc});
  // A header and two rows, whatever the names hold.
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 3) << table;
  EXPECT_THAT(table, HasSubstr("x\\nbbbbbbbbbbbb  evil.pt"));
  EXPECT_THAT(table, HasSubstr("\\x1b[2J\\x1b]0;pwned\\x07name\\xff"));
  EXPECT_THAT(table, Not(HasSubstr("\x1b")));

  v1::Model model;
  model.set_id(std::string(64, 'd'));
  model.set_name(
      "m\r\n\xc2\x9b"
      "31m");
  const std::string one = FormatModel(model);
  EXPECT_THAT(one, HasSubstr("name:"));
  EXPECT_THAT(one, HasSubstr("m\\r\\n\\u009b31m"));
  EXPECT_THAT(FormatModelTable({model}), HasSubstr("m\\r\\n\\u009b31m"));
}

TEST(HostileTextTest, EventLinesAndErrorsStayOnOneLine) {
  v1::JobEvent e;
  e.mutable_log()->set_message("done\n[INFO] forged line\x1b[K");
  EXPECT_EQ(FormatEventLine(e), "[INFO] done\\n[INFO] forged line\\x1b[K");
  e.mutable_artifact_ready()->set_name("a\tb");
  EXPECT_EQ(FormatEventLine(e), "artifact a\\tb (0 bytes)");

  v1::Job job;
  job.set_id("j1");
  job.set_request_id("req\x1b[31m");
  job.mutable_error()->set_code(3);
  job.mutable_error()->set_message("spec.quantize.pins[0].layer: \"a\nb\" unknown");
  const std::string text = FormatJob(job);
  EXPECT_THAT(text, HasSubstr("request id: req\\x1b[31m"));
  EXPECT_THAT(text, HasSubstr("INVALID_ARGUMENT: spec.quantize.pins[0].layer: \"a\\nb\" unknown"));
  EXPECT_THAT(text, Not(HasSubstr("\x1b")));

  v1::Progress p = MakeProgress("st\x1b[2Jage", 1, 2, -1);
  EXPECT_EQ(RenderProgressBar(p, 2), "[#.] st\\x1b[2Jage 1/2");
}

TEST(HostileTextTest, PrintableNamesAreShownAsGiven) {
  v1::Dataset d;
  d.set_id("builtin:fashion-mnist/test");
  d.set_name("r\u00e9seau \u4e2d C:\\data\\calib.safetensors");
  EXPECT_THAT(FormatDatasetTable({d}), HasSubstr("r\u00e9seau \u4e2d C:\\data\\calib.safetensors"));
  // JSON keeps the exact text, escaped as JSON does.
  v1::Dataset esc;
  esc.set_name(
      "a\x1b"
      "b");
  EXPECT_EQ(ToJson(esc), "{\"name\":\"a\\u001bb\"}");
}

}  // namespace
}  // namespace compress::client
