#include "route/complexity.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "support/emulator.h"
#include "support/process.h"
#include "support/test_paths.h"
#include "training/router_training.h"

namespace foreshore::route {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

double feature(const ComplexityFeatures& f, DenseFeature which) {
  return f.dense[static_cast<int>(which)];
}

ComplexityFeatures features(std::string_view text) {
  return extract_complexity_features(text, HashingSpec{});
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

fs::path shared_data() {
  return fs::path(FSH_SHARED_DATA_DIR);
}

// ---- features -------------------------------------------------------------------

TEST(ComplexityFeatures, DetectsCode) {
  const auto code = features(
      "Fix this function:\n```python\ndef add(a, b):\n    return a + b;\n```\nWhy does it fail?");
  const auto prose = features("Tell me a short story about a cat who likes the sea.");
  EXPECT_DOUBLE_EQ(feature(code, DenseFeature::kCodeFences), std::log1p(2.0));
  EXPECT_GT(feature(code, DenseFeature::kCodeKeywords), 0.0);
  EXPECT_GT(feature(code, DenseFeature::kCodePunctDensity), 0.0);
  EXPECT_GT(feature(code, DenseFeature::kQuestionMarks), 0.0);
  EXPECT_EQ(feature(prose, DenseFeature::kCodeFences), 0.0);
  EXPECT_EQ(feature(prose, DenseFeature::kCodeKeywords), 0.0);
  EXPECT_EQ(feature(prose, DenseFeature::kCodePunctDensity), 0.0);
}

TEST(ComplexityFeatures, DetectsMath) {
  const auto math = features("Solve for x: 3x^2 + 2x - 5 = 0, then compute $\\frac{x}{2}$.");
  EXPECT_GT(feature(math, DenseFeature::kMathOps), 0.0);
  EXPECT_GT(feature(math, DenseFeature::kEquations), 0.0);
  EXPECT_GT(feature(math, DenseFeature::kLatex), 0.0);
  EXPECT_GT(feature(math, DenseFeature::kDigitShare), 0.0);
  EXPECT_GT(feature(math, DenseFeature::kMultiStepCues), 0.0);  // "solve", "compute"
  // Hyphens between words and prose slashes are not arithmetic.
  const auto prose = features("A well-known and/or long-standing tradition.");
  EXPECT_EQ(feature(prose, DenseFeature::kMathOps), 0.0);
  EXPECT_EQ(feature(prose, DenseFeature::kEquations), 0.0);
}

TEST(ComplexityFeatures, LengthAndStructure) {
  const std::string one = "What is the capital of France?";
  std::string many;
  for (int i = 0; i < 20; ++i) many += one + "\n";
  const auto a = features(one);
  const auto b = features(many);
  EXPECT_DOUBLE_EQ(feature(a, DenseFeature::kLogChars), std::log1p(one.size()));
  EXPECT_DOUBLE_EQ(feature(a, DenseFeature::kLogWords), std::log1p(6.0));
  EXPECT_GT(feature(b, DenseFeature::kLogChars), feature(a, DenseFeature::kLogChars));
  EXPECT_GT(feature(b, DenseFeature::kLogTokensEst), feature(a, DenseFeature::kLogTokensEst));
  EXPECT_DOUBLE_EQ(feature(b, DenseFeature::kQuestionMarks), std::log1p(20.0));
  EXPECT_DOUBLE_EQ(feature(b, DenseFeature::kLogSentences), std::log1p(20.0));
  EXPECT_EQ(features("").hashed.size(), 0u);
}

TEST(ComplexityFeatures, AnswerOptionsAndCues) {
  const auto mcq =
      features("Which of the following is NOT a prime number?\nA. 2\nB. 3\nC. 9\nD. 11\nAnswer:");
  EXPECT_DOUBLE_EQ(feature(mcq, DenseFeature::kAnswerOptions), std::log1p(4.0));
  EXPECT_DOUBLE_EQ(feature(mcq, DenseFeature::kNumericOptions), 1.0);
  EXPECT_DOUBLE_EQ(feature(mcq, DenseFeature::kNegationCues), std::log1p(1.0));
  EXPECT_DOUBLE_EQ(feature(mcq, DenseFeature::kStemLogChars), std::log1p(46.0));
  const auto steps = features(
      "Explain step by step why the sky is blue.\n1. Light\n2. Scattering\nStatement 1 | x");
  EXPECT_GE(feature(steps, DenseFeature::kMultiStepCues), std::log1p(3.0));
  EXPECT_DOUBLE_EQ(feature(steps, DenseFeature::kNumberedItems), std::log1p(2.0));
  EXPECT_DOUBLE_EQ(feature(steps, DenseFeature::kPipes), std::log1p(1.0));
  const auto domain = features("The plaintiff sued the defendant; the patient's blood tests...");
  EXPECT_GT(feature(domain, DenseFeature::kLawTerms), 0.0);
  EXPECT_GT(feature(domain, DenseFeature::kMedicineTerms), 0.0);
}

TEST(ComplexityFeatures, LanguageAndPerplexity) {
  const auto ja = extract_complexity_features("東京の天気はどうですか", HashingSpec{}, 12.5);
  EXPECT_GT(feature(ja, DenseFeature::kNonAsciiShare), 0.9);
  EXPECT_FALSE(ja.hashed.empty());  // non-ASCII words are hashed too
  EXPECT_EQ(feature(ja, DenseFeature::kHasPerplexity), 1.0);
  EXPECT_DOUBLE_EQ(feature(ja, DenseFeature::kLogPerplexity), std::log(12.5));
  EXPECT_EQ(feature(features("hello"), DenseFeature::kHasPerplexity), 0.0);
}

TEST(ComplexityFeatures, HashingIsDeterministicSortedAndNormalized) {
  HashingSpec spec;
  spec.bits = 10;
  const auto a = extract_complexity_features("the cat sat on the mat", spec);
  const auto b = extract_complexity_features("the cat sat on the mat", spec);
  ASSERT_EQ(a.hashed, b.hashed);
  double norm_sum = 0;
  for (size_t i = 0; i < a.hashed.size(); ++i) {
    EXPECT_LT(a.hashed[i].first, 1u << spec.bits);
    if (i > 0) {
      EXPECT_LT(a.hashed[i - 1].first, a.hashed[i].first);
    }
    norm_sum += std::abs(a.hashed[i].second);
  }
  // Six words, each worth 1/sqrt(6); "the" twice lands in one bucket.
  EXPECT_NEAR(norm_sum, 6.0 / std::sqrt(6.0), 1e-5);
  spec.bigrams = true;
  EXPECT_GT(extract_complexity_features("the cat sat on the mat", spec).hashed.size(),
            a.hashed.size());
  // Case does not matter; numbers hash by their digit count.
  spec.bigrams = false;
  EXPECT_EQ(extract_complexity_features("The CAT", spec).hashed,
            extract_complexity_features("the cat", spec).hashed);
  EXPECT_EQ(extract_complexity_features("year 1914", spec).hashed,
            extract_complexity_features("year 1789", spec).hashed);
}

// ---- training data ----------------------------------------------------------------

// Prompts that are hard for the edge talk about one thing, easy ones about
// another, so a working trainer must separate them.
std::vector<LabelledPrompt> separable_rows(int n) {
  const char* hard[] = {"derive the quantum entanglement entropy bound",
                        "prove the spectral theorem for compact operators",
                        "analyze the asymptotic complexity of this recursive algorithm"};
  const char* easy[] = {"hello how are you today", "what color is the sky",
                        "tell me a joke about cats"};
  std::vector<LabelledPrompt> rows;
  for (int i = 0; i < n; ++i) {
    LabelledPrompt p;
    const bool is_hard = i % 2 == 0;
    p.prompt = std::string(is_hard ? hard[i % 3] : easy[i % 3]) + " #" + std::to_string(i);
    p.edge_quality = is_hard ? 0.0 : 1.0;
    p.cloud_quality = 1.0;
    p.outcome = is_hard ? Outcome::kCloudBetter : Outcome::kBothGood;
    rows.push_back(std::move(p));
  }
  return rows;
}

TrainOptions small_options() {
  TrainOptions o;
  o.hashing.bits = 10;
  o.calibration_folds = 0;
  return o;
}

TEST(ComplexityTraining, RecoversASeparableDataset) {
  const auto rows = separable_rows(120);
  TrainReport report;
  auto model = train_complexity_model(rows, small_options(), &report);
  ASSERT_TRUE(model.ok()) << model.error().message;
  EXPECT_TRUE(report.converged);
  double min_hard = 1.0, max_easy = 0.0;
  for (const auto& r : rows) {
    const double s = model->score(r.prompt);
    if (r.outcome == Outcome::kCloudBetter) {
      min_hard = std::min(min_hard, s);
    } else {
      max_easy = std::max(max_easy, s);
    }
  }
  EXPECT_GT(min_hard, max_easy);
  EXPECT_GT(model->score("please derive and prove the quantum bound"),
            model->score("hello, tell me about the sky"));
  std::vector<double> scores;
  for (const auto& r : rows) scores.push_back(model->score(r.prompt));
  auto m = evaluate_routing(scores, rows);
  ASSERT_TRUE(m.ok());
  auto oracle = oracle_routing(rows);
  ASSERT_TRUE(oracle.ok());
  EXPECT_NEAR(m->apgr, oracle->apgr, 1e-9);
}

TEST(ComplexityTraining, IsDeterministicAndScoringPathsAgree) {
  const auto rows = separable_rows(60);
  auto a = train_complexity_model(rows, small_options());
  auto b = train_complexity_model(rows, small_options());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->to_json(), b->to_json());
  for (const auto& r : rows) {
    const auto f = extract_complexity_features(r.prompt, a->hashing());
    EXPECT_NEAR(a->score(r.prompt), a->score(f), 1e-6);
    EXPECT_NEAR(a->score(r.prompt), a->explain(r.prompt).probability, 1e-6);
  }
}

TEST(ComplexityTraining, RejectsUnusableInput) {
  auto rows = separable_rows(10);
  for (auto& r : rows) r.outcome = Outcome::kBothGood;
  TrainOptions o = small_options();
  o.label = LabelRule::kWeakWrong;
  auto m = train_complexity_model(rows, o);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("same"), std::string::npos);
  EXPECT_FALSE(train_complexity_model({}, o).ok());
  o = small_options();
  o.target_cloud_share = 1.5;
  EXPECT_FALSE(train_complexity_model(separable_rows(10), o).ok());
}

TEST(ComplexityTraining, LabelRules) {
  EXPECT_EQ(label_for(Outcome::kBothBad, LabelRule::kWeakWrong), 1.0);
  EXPECT_EQ(label_for(Outcome::kBothBad, LabelRule::kCloudWins), 0.0);
  EXPECT_EQ(label_for(Outcome::kBothBad, LabelRule::kGain), 0.5);
  EXPECT_EQ(label_for(Outcome::kBothGood, LabelRule::kGain), 0.5);
  EXPECT_EQ(label_for(Outcome::kCloudBetter, LabelRule::kGain), 1.0);
  EXPECT_EQ(label_for(Outcome::kEdgeBetter, LabelRule::kGain), 0.0);
  EXPECT_EQ(parse_label_rule("weak-wrong"), LabelRule::kWeakWrong);
  EXPECT_FALSE(parse_label_rule("bogus").has_value());
}

// ---- calibration --------------------------------------------------------------------

// ---- cross-validation --------------------------------------------------------------------

// Ten subjects. With `cue_signal`, hard prompts carry words that mean "hard" in
// every subject; without it, whole subjects are hard or easy and only the
// subject's own word tells them apart.
std::vector<LabelledPrompt> subject_rows(bool cue_signal) {
  std::vector<LabelledPrompt> rows;
  for (int s = 0; s < 10; ++s) {
    for (int i = 0; i < 40; ++i) {
      const bool hard = cue_signal ? i % 2 == 0 : s % 2 == 0;
      LabelledPrompt p;
      p.subject = "subject" + std::to_string(s);
      p.prompt = "topic" + std::to_string(s) + " question " +
                 (cue_signal ? (hard ? "prove derive bound" : "name list recall") : "about it");
      p.edge_quality = hard ? 0.0 : 1.0;
      p.cloud_quality = 1.0;
      p.outcome = hard ? Outcome::kCloudBetter : Outcome::kBothGood;
      rows.push_back(std::move(p));
    }
  }
  return rows;
}

TEST(ComplexityCrossValidation, FoldsPartitionTheSubjects) {
  const auto rows = subject_rows(true);
  CrossValidationOptions cv;
  cv.repeats = 2;
  auto r = cross_validate(rows, {}, small_options(), cv);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->repeats.size(), 2u);
  // Half the prompts are hard, so even the perfect router's APGR is 0.75.
  auto best = oracle_routing(rows);
  ASSERT_TRUE(best.ok());
  std::vector<std::vector<std::string>> partitions;
  for (const auto& rep : r->repeats) {
    ASSERT_EQ(rep.folds.size(), 5u);
    std::vector<std::string> seen;
    int64_t rows_seen = 0;
    for (const auto& fold : rep.folds) {
      EXPECT_EQ(fold.subjects.size(), 2u);
      EXPECT_EQ(fold.rows, 80);
      rows_seen += fold.rows;
      seen.insert(seen.end(), fold.subjects.begin(), fold.subjects.end());
    }
    EXPECT_EQ(rows_seen, 400);
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end());
    EXPECT_EQ(seen.size(), 10u);
    partitions.push_back({rep.folds[0].subjects});
    // A cue that means "hard" everywhere carries over to unseen subjects.
    EXPECT_NEAR(rep.pooled.apgr, best->apgr, 1e-9);
    ASSERT_TRUE(rep.within_subject_apgr.has_value());
    EXPECT_NEAR(*rep.within_subject_apgr, best->apgr, 1e-9);
  }
  EXPECT_NE(partitions[0], partitions[1]);
  auto again = cross_validate(rows, {}, small_options(), cv);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->mean_apgr, r->mean_apgr);
}

TEST(ComplexityCrossValidation, SubjectIdentityDoesNotCarryToNewSubjects) {
  const auto rows = subject_rows(false);
  CrossValidationOptions by_row;
  by_row.by_subject = false;
  auto memorized = cross_validate(rows, {}, small_options(), by_row);
  ASSERT_TRUE(memorized.ok()) << memorized.error().message;
  auto best = oracle_routing(rows);
  ASSERT_TRUE(best.ok());
  EXPECT_NEAR(memorized->mean_apgr, best->apgr, 1e-9);
  auto unseen = cross_validate(rows, {}, small_options(), CrossValidationOptions{});
  ASSERT_TRUE(unseen.ok()) << unseen.error().message;
  EXPECT_LT(unseen->mean_apgr, 0.55);
  // Within one subject every prompt looks alike: nothing to rank there.
  ASSERT_TRUE(unseen->repeats[0].within_subject_apgr.has_value());
  EXPECT_DOUBLE_EQ(*unseen->repeats[0].within_subject_apgr, 0.5);
}

TEST(ComplexityCrossValidation, TrainOnlyRowsJoinEveryFold) {
  // Each subject has its own words for hard and easy, so the other subjects
  // teach nothing; the train-only rows hold every subject's words.
  std::vector<LabelledPrompt> rows, extra;
  for (int s = 0; s < 8; ++s) {
    for (int i = 0; i < 20; ++i) {
      const bool hard = i % 2 == 0;
      LabelledPrompt p;
      p.subject = "subject" + std::to_string(s);
      p.prompt = (hard ? "hardcue" : "easycue") + std::to_string(s) + " question";
      p.edge_quality = hard ? 0.0 : 1.0;
      p.cloud_quality = 1.0;
      p.outcome = hard ? Outcome::kCloudBetter : Outcome::kBothGood;
      rows.push_back(p);
      p.subject = "extra";
      extra.push_back(std::move(p));
    }
  }
  CrossValidationOptions cv;
  cv.folds = 4;
  auto alone = cross_validate(rows, {}, small_options(), cv);
  ASSERT_TRUE(alone.ok()) << alone.error().message;
  EXPECT_LT(alone->mean_apgr, 0.55);
  auto helped = cross_validate(rows, extra, small_options(), cv);
  ASSERT_TRUE(helped.ok()) << helped.error().message;
  auto best = oracle_routing(rows);
  ASSERT_TRUE(best.ok());
  EXPECT_NEAR(helped->mean_apgr, best->apgr, 1e-9);
  int64_t scored = 0;
  for (const auto& fold : helped->repeats[0].folds) scored += fold.rows;
  EXPECT_EQ(scored, static_cast<int64_t>(rows.size()));
}

TEST(ComplexityCrossValidation, RefusesImpossibleSplits) {
  const auto rows = subject_rows(true);
  CrossValidationOptions cv;
  cv.folds = 11;
  auto r = cross_validate(rows, {}, small_options(), cv);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("10"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("--group row"), std::string::npos);
  cv.folds = 1;
  EXPECT_FALSE(cross_validate(rows, {}, small_options(), cv).ok());
}

TEST(ComplexityCalibration, HitsTargetShare) {
  std::vector<double> scores;
  for (int i = 0; i < 1000; ++i) scores.push_back(std::fmod(i * 0.6180339887, 1.0));
  for (double share : {0.0, 0.1, 0.3, 0.5, 0.9, 1.0}) {
    const double t = calibrate_threshold(scores, share);
    int cloud = 0;
    for (double s : scores) cloud += s >= t;
    EXPECT_NEAR(cloud / 1000.0, share, 0.002) << "share " << share;
  }
  // Ties move together: 3 of 5 cannot be reached, 4 of 5 is the nearest.
  const std::vector<double> tied = {0.9, 0.5, 0.5, 0.5, 0.1};
  const double t = calibrate_threshold(tied, 0.6);
  int cloud = 0;
  for (double s : tied) cloud += s >= t;
  EXPECT_EQ(cloud, 4);
}

TEST(ComplexityCalibration, TrainingCalibratesToTargetShare) {
  auto rows = separable_rows(200);
  TrainOptions o = small_options();
  o.calibration_folds = 5;
  o.target_cloud_share = 0.25;
  TrainReport report;
  auto model = train_complexity_model(rows, o, &report);
  ASSERT_TRUE(model.ok()) << model.error().message;
  EXPECT_EQ(report.calibration_folds, 5);
  EXPECT_NEAR(report.calibrated_cloud_share, 0.25, 0.03);
}

// ---- evaluation ----------------------------------------------------------------------

std::vector<LabelledPrompt> toy_rows() {
  // Two prompts only the cloud gets right, two both get right.
  std::vector<LabelledPrompt> rows(4);
  for (int i = 0; i < 4; ++i) {
    rows[i].edge_quality = i < 2 ? 0.0 : 1.0;
    rows[i].cloud_quality = 1.0;
  }
  return rows;
}

TEST(ComplexityEval, PerfectReversedAndRandomRouters) {
  const auto rows = toy_rows();
  // Perfect: curve (0,.5) (.25,.75) (.5,1) (.75,1) (1,1), AUC .875.
  auto perfect = evaluate_routing(std::vector<double>{4, 3, 2, 1}, rows);
  ASSERT_TRUE(perfect.ok());
  EXPECT_DOUBLE_EQ(perfect->edge_quality, 0.5);
  EXPECT_DOUBLE_EQ(perfect->cloud_quality, 1.0);
  EXPECT_DOUBLE_EQ(perfect->auc, 0.875);
  EXPECT_DOUBLE_EQ(perfect->apgr, 0.75);
  EXPECT_DOUBLE_EQ(*perfect->cpt50, 0.25);
  EXPECT_DOUBLE_EQ(*perfect->cpt80, 0.4);
  ASSERT_EQ(perfect->curve.size(), 5u);
  // Reversed: curve (0,.5) (.25,.5) (.5,.5) (.75,.75) (1,1), AUC .625.
  auto reversed = evaluate_routing(std::vector<double>{1, 2, 3, 4}, rows);
  ASSERT_TRUE(reversed.ok());
  EXPECT_DOUBLE_EQ(reversed->apgr, 0.25);
  EXPECT_DOUBLE_EQ(*reversed->cpt50, 0.75);
  EXPECT_DOUBLE_EQ(*reversed->cpt80, 0.9);
  // One score for all: a straight line, exactly the random router's expectation.
  auto flat = evaluate_routing(std::vector<double>{0.5, 0.5, 0.5, 0.5}, rows);
  ASSERT_TRUE(flat.ok());
  EXPECT_DOUBLE_EQ(flat->apgr, 0.5);
  EXPECT_DOUBLE_EQ(*flat->cpt50, 0.5);
  EXPECT_DOUBLE_EQ(*flat->cpt80, 0.8);
  EXPECT_EQ(flat->curve.size(), 2u);
  auto oracle = oracle_routing(rows);
  ASSERT_TRUE(oracle.ok());
  EXPECT_DOUBLE_EQ(oracle->apgr, 0.75);
}

TEST(ComplexityEval, RandomBaselineAveragesOneHalf) {
  std::vector<LabelledPrompt> rows(400);
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i].edge_quality = i % 3 == 0 ? 0.0 : 1.0;
    rows[i].cloud_quality = i % 7 == 0 ? 0.0 : 1.0;
  }
  auto b = random_baseline(rows, 200, 7);
  ASSERT_TRUE(b.ok());
  EXPECT_NEAR(b->apgr_mean, 0.5, 0.03);
  EXPECT_NEAR(b->cpt50_mean, 0.5, 0.04);
  EXPECT_NEAR(b->cpt80_mean, 0.8, 0.04);
  EXPECT_LT(b->apgr_lo, b->apgr_mean);
  EXPECT_GT(b->apgr_hi, b->apgr_mean);
}

TEST(ComplexityEval, RefusesUndefinedApgr) {
  std::vector<LabelledPrompt> rows(3);
  for (auto& r : rows) r.edge_quality = r.cloud_quality = 1.0;
  auto m = evaluate_routing(std::vector<double>{1, 2, 3}, rows);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("same mean quality"), std::string::npos);
  EXPECT_FALSE(evaluate_routing(std::vector<double>{1}, rows).ok());
}

// ---- model files ---------------------------------------------------------------------

TEST(ComplexityModelFile, RoundTrips) {
  auto model = train_complexity_model(separable_rows(60), small_options());
  ASSERT_TRUE(model.ok());
  const std::string path = foreshore::testing::temp_path(".json");
  ASSERT_TRUE(model->save(path).ok());
  auto loaded = ComplexityModel::load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(loaded->to_json(), model->to_json());
  EXPECT_EQ(loaded->threshold(), model->threshold());
  EXPECT_EQ(loaded->info().label_rule, "gain");
  for (const char* p : {"derive the quantum bound", "hello", ""}) {
    EXPECT_EQ(loaded->score(p), model->score(p)) << p;
  }
  fs::remove(path);
}

TEST(ComplexityModelFile, ValidationErrorsNameTheProblem) {
  auto model = train_complexity_model(separable_rows(40), small_options());
  ASSERT_TRUE(model.ok());
  const json good = json::parse(model->to_json());
  auto expect_error = [](const json& doc, const std::string& needle) {
    auto r = ComplexityModel::parse(doc.dump(), "m.json");
    ASSERT_FALSE(r.ok()) << "accepted a model with " << needle;
    EXPECT_EQ(r.error().kind, ErrorKind::kCorrupt);
    EXPECT_NE(r.error().message.find("m.json"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
  };
  EXPECT_FALSE(ComplexityModel::parse("{not json", "m.json").ok());
  json d = good;
  d["format"] = "something-else";
  expect_error(d, "format");
  d = good;
  d["version"] = 99;
  expect_error(d, "version 99");
  d = good;
  d["feature_spec"]["version"] = 0;
  expect_error(d, "feature_spec.version");
  d = good;
  d["feature_spec"]["hash_bits"] = 40;
  expect_error(d, "hash_bits");
  d = good;
  d["dense"][2]["name"] = "bogus";
  expect_error(d, "dense[2].name");
  d = good;
  d["dense"].erase(d["dense"].size() - 1);
  expect_error(d, "dense has");
  d = good;
  d["hashed"]["index"][0] = 1u << 20;
  expect_error(d, "hashed.index[0]");
  d = good;
  d["hashed"]["weight"].erase(0);
  expect_error(d, "hashed.weight has");
  d = good;
  d["threshold"] = 1.5;
  expect_error(d, "threshold");
  d = good;
  d.erase("bias");
  expect_error(d, "bias");
  d = good;
  d["dense"][0]["scale"] = 0.0;
  expect_error(d, "scale");
  auto missing = ComplexityModel::load("/nonexistent/model.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind, ErrorKind::kNotFound);
}

// ---- data files -----------------------------------------------------------------------

TEST(ComplexityData, ReadsRouteLlmCsvAndAppliesContamination) {
  const fs::path dir = foreshore::testing::temp_path("-mmlu");
  fs::create_directories(dir);
  write_file((dir / "mmlu_toy_subject.csv").string(),
             "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n"
             "\"Q1 \"\"quoted\"\"\nA. x\nB. y\nAnswer:\",True,True\n"
             "Q2,False,True\n"
             "Q3,False,False\n"
             "Q4,True,False\n"
             "Leaked,False,True\n");
  write_file((dir / "contaminated_prompts.jsonl").string(),
             "{\"train_prompt\":\"x\",\"eval_prompt\":\"Leaked\"}\n");
  LoadReport report;
  auto rows = load_labelled_prompts({dir.string()}, DataOptions{}, &report);
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  ASSERT_EQ(rows->size(), 4u);
  EXPECT_EQ(report.excluded_contaminated, 1);
  EXPECT_EQ((*rows)[0].prompt, "Q1 \"quoted\"\nA. x\nB. y\nAnswer:");
  EXPECT_EQ((*rows)[0].subject, "toy_subject");
  EXPECT_EQ((*rows)[0].outcome, Outcome::kBothGood);
  EXPECT_EQ((*rows)[1].outcome, Outcome::kCloudBetter);
  EXPECT_EQ((*rows)[2].outcome, Outcome::kBothBad);
  EXPECT_EQ((*rows)[3].outcome, Outcome::kEdgeBetter);
  DataOptions only;
  only.drop_subjects = {"toy_subject"};
  auto none = load_labelled_prompts({dir.string()}, only, &report);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->size(), 0u);
  EXPECT_EQ(report.dropped_by_subject, 4);
  fs::remove_all(dir);
}

// A list names prompts a benchmark shares with training data, so it applies
// to every folder of the data tree, not only the one it sits in.
TEST(ComplexityData, ContaminationListsApplyAcrossTheDataTree) {
  const fs::path root = fs::path(foreshore::testing::temp_path("-tree")) / "router-data";
  fs::create_directories(root / "routellm" / "mmlu");
  fs::create_directories(root / "arena");
  write_file((root / "routellm" / "mmlu" / "contaminated_prompts.jsonl").string(),
             "{\"train_prompt\":\"Leaked arena prompt\",\"eval_prompt\":\"Q9\"}\n");
  write_file((root / "arena" / "mine.jsonl").string(),
             "{\"prompt\": \"Fresh prompt\", \"edge_ok\": true}\n"
             "{\"prompt\": \"Leaked arena prompt\", \"edge_ok\": false}\n");
  LoadReport report;
  auto rows = load_labelled_prompts({(root / "arena").string()}, DataOptions{}, &report);
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].prompt, "Fresh prompt");
  EXPECT_EQ(report.excluded_contaminated, 1);
  ASSERT_EQ(report.exclusion_lists.size(), 1u);
  EXPECT_NE(report.exclusion_lists[0].find("mmlu"), std::string::npos);

  // Outside a router-data folder only the file's own folder's list applies:
  // the folders beside the data (here a sibling's list) are not swept in.
  const fs::path loose = root.parent_path() / "loose";
  fs::create_directories(loose / "arena");
  fs::create_directories(loose / "other");
  write_file((loose / "other" / "contaminated_prompts.jsonl").string(),
             "{\"eval_prompt\":\"Leaked arena prompt\"}\n");
  fs::copy_file(root / "arena" / "mine.jsonl", loose / "arena" / "mine.jsonl");
  LoadReport loose_report;
  auto loose_rows =
      load_labelled_prompts({(loose / "arena").string()}, DataOptions{}, &loose_report);
  ASSERT_TRUE(loose_rows.ok()) << loose_rows.error().message;
  EXPECT_EQ(loose_rows->size(), 2u);
  EXPECT_EQ(loose_report.excluded_contaminated, 0);
  EXPECT_TRUE(loose_report.exclusion_lists.empty());
  fs::remove_all(root.parent_path());
}

TEST(ComplexityData, ReadsJsonlRouterBenchAndMtBench) {
  const fs::path dir = foreshore::testing::temp_path("-data");
  fs::create_directories(dir);
  write_file((dir / "mine.jsonl").string(),
             "{\"prompt\":\"a\",\"edge_ok\":true,\"subject\":\"s\"}\n\n"
             "{\"prompt\":\"b\",\"edge_ok\":false,\"edge_perplexity\":7.5}\n"
             "{\"prompt\":\"c\",\"scores\":{\"edge\":3,\"cloud\":9}}\n");
  auto rows = load_labelled_prompts({(dir / "mine.jsonl").string()}, DataOptions{});
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_EQ((*rows)[0].outcome, Outcome::kBothGood);
  EXPECT_EQ((*rows)[0].subject, "s");
  EXPECT_EQ((*rows)[1].outcome, Outcome::kCloudBetter);
  EXPECT_EQ((*rows)[1].edge_perplexity, 7.5);
  EXPECT_EQ((*rows)[2].cloud_quality, 9.0);

  write_file((dir / "bad.jsonl").string(), "{\"prompt\":\"a\",\"edge_ok\":true}\n{\"prompt\":1}\n");
  auto bad = load_labelled_prompts({(dir / "bad.jsonl").string()}, DataOptions{});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("bad.jsonl:2"), std::string::npos) << bad.error().message;

  write_file((dir / "rb.csv").string(),
             ",sample_id,prompt,eval_name,mistralai/mistral-7b-chat,mistralai/mixtral-8x7b-chat,"
             "gpt-4-1106-preview\n"
             "0,x.1,\"['Write a python function.\\nReturn it.']\",mbpp,1.0,0.0,1.0\n"
             "1,x.2,\"['q']\",mbpp,1.0,,1.0\n");
  LoadReport report;
  auto rb = load_labelled_prompts({(dir / "rb.csv").string()}, DataOptions{}, &report);
  ASSERT_TRUE(rb.ok()) << rb.error().message;
  ASSERT_EQ(rb->size(), 1u);
  EXPECT_EQ((*rb)[0].prompt, "Write a python function.\nReturn it.");
  EXPECT_EQ((*rb)[0].subject, "mbpp");
  // The default pair is Mixtral vs GPT-4, as in the RouteLLM data.
  EXPECT_EQ((*rb)[0].outcome, Outcome::kCloudBetter);
  EXPECT_EQ(report.skipped_unlabelled, 1);

  const fs::path mt = dir / "mt";
  fs::create_directories(mt);
  write_file((mt / "question.jsonl").string(),
             "{\"question_id\":1,\"category\":\"math\",\"turns\":[\"t1\",\"t2\"]}\n");
  write_file((mt / "judgements.jsonl").string(),
             "{\"question_id\":1,\"model\":\"gpt-4-1106-preview\",\"score\":9,\"turn\":1}\n"
             "{\"question_id\":1,\"model\":\"mistralai/Mixtral-8x7B-Instruct-v0.1\",\"score\":4,"
             "\"turn\":1}\n"
             "{\"question_id\":1,\"model\":\"gpt-4-1106-preview\",\"score\":5,\"turn\":2}\n"
             "{\"question_id\":1,\"model\":\"mistralai/Mixtral-8x7B-Instruct-v0.1\",\"score\":5,"
             "\"turn\":2}\n");
  auto mtrows = load_labelled_prompts({mt.string()}, DataOptions{});
  ASSERT_TRUE(mtrows.ok()) << mtrows.error().message;
  ASSERT_EQ(mtrows->size(), 2u);
  EXPECT_EQ((*mtrows)[0].prompt, "t1");
  EXPECT_EQ((*mtrows)[0].outcome, Outcome::kCloudBetter);
  EXPECT_EQ((*mtrows)[1].prompt, "t1\n\nt2");
  EXPECT_EQ((*mtrows)[1].outcome, Outcome::kBothGood);

  auto missing = load_labelled_prompts({(dir / "nope.csv").string()}, DataOptions{});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind, ErrorKind::kNotFound);
  fs::remove_all(dir);
}

TEST(ComplexityData, FixedHoldoutSplit) {
  const auto& all = routellm_mmlu_subjects();
  const auto& holdout = default_holdout_subjects();
  EXPECT_EQ(all.size(), 38u);
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end()));
  ASSERT_EQ(holdout.size(), 9u);
  EXPECT_EQ(holdout.front(), "clinical_knowledge");
  EXPECT_EQ(holdout.back(), "security_studies");
}

TEST(ComplexityData, ReadsArenaHardJudgements) {
  const fs::path dir = foreshore::testing::temp_path("-arena");
  fs::create_directories(dir / "model_judgment");
  write_file((dir / "question.jsonl").string(),
             "{\"question_id\":\"q1\",\"category\":\"arena\",\"turns\":[\"Prove it\"]}\n"
             "{\"question_id\":\"q2\",\"category\":\"arena\",\"turns\":[\"Say hi\"]}\n"
             "{\"question_id\":\"q3\",\"category\":\"arena\",\"turns\":[\"Unjudged\"]}\n");
  write_file((dir / "model_judgment" / "gpt-4-turbo.jsonl").string(),
             "{\"question_id\":\"q1\",\"model\":\"gpt-4-1106-preview\",\"score\":9}\n"
             "{\"question_id\":\"q2\",\"model\":\"gpt-4-1106-preview\",\"score\":8}\n"
             "{\"question_id\":\"q3\",\"model\":\"gpt-4-1106-preview\",\"score\":null}\n");
  write_file((dir / "model_judgment" / "Mixtral.jsonl").string(),
             "{\"question_id\":\"q1\",\"model\":\"mistralai/Mixtral-8x7B-Instruct-v0.1\","
             "\"score\":3}\n"
             "{\"question_id\":\"q2\",\"model\":\"mistralai/Mixtral-8x7B-Instruct-v0.1\","
             "\"score\":8}\n"
             "{\"question_id\":\"q3\",\"model\":\"mistralai/Mixtral-8x7B-Instruct-v0.1\","
             "\"score\":5}\n");
  // Another model's judgements are not read.
  write_file((dir / "model_judgment" / "other.jsonl").string(),
             "{\"question_id\":\"q1\",\"model\":\"someone/else\",\"score\":1}\n");
  // The folder, or its model_judgment/, is one data set.
  for (const fs::path& given : {dir, dir / "model_judgment"}) {
    LoadReport report;
    auto rows = load_labelled_prompts({given.string()}, DataOptions{}, &report);
    ASSERT_TRUE(rows.ok()) << rows.error().message;
    ASSERT_EQ(rows->size(), 2u);
    EXPECT_EQ((*rows)[0].prompt, "Prove it");
    EXPECT_EQ((*rows)[0].subject, "arena");
    EXPECT_EQ((*rows)[0].outcome, Outcome::kCloudBetter);
    EXPECT_EQ((*rows)[1].outcome, Outcome::kBothGood);
    EXPECT_EQ(report.skipped_unlabelled, 1);  // q3: the strong model's verdict has no score
  }
  fs::remove_all(dir);
}

// ---- the shipped model, end to end ------------------------------------------------------

// The shipped model learns from every labelled subject; traffic from subjects
// it never saw is what the held-out evaluation below measures.
TEST(ComplexityDefaultModel, LoadsAndRecordsItsTraining) {
  auto model =
      ComplexityModel::load(std::string(FSH_SOURCE_DIR) + "/data/router/complexity-default.json");
  ASSERT_TRUE(model.ok()) << model.error().message;
  EXPECT_TRUE(model->info().holdout_subjects.empty());
  // Chat traffic: Arena-Hard and MT-Bench judgements, and everyday requests.
  const auto& trained = model->info().training_subjects;
  for (const char* s : {"arena-bench-v1", "coding", "math", "writing", "everyday"}) {
    EXPECT_NE(std::find(trained.begin(), trained.end(), s), trained.end()) << s;
  }
  EXPECT_NE(model->info().command.find("--label cloud-wins"), std::string::npos);
  const double p = model->score("What is 2 + 2?");
  EXPECT_GE(p, 0.0);
  EXPECT_LE(p, 1.0);
}

// On ordinary chat traffic the shipped model sends hard multi-part work to the
// cloud and keeps small talk on the edge. None of these prompts is in its
// training data (data/router/train/everyday-requests.jsonl, Arena-Hard,
// MT-Bench).
TEST(ComplexityDefaultModel, HardChatPromptsScoreAboveTheThresholdTrivialOnesBelow) {
  auto model =
      ComplexityModel::load(std::string(FSH_SOURCE_DIR) + "/data/router/complexity-default.json");
  ASSERT_TRUE(model.ok()) << model.error().message;
  for (const char* hard : {
           "Prove that the square root of 2 is irrational. Then compute the integral of x^2 e^x "
           "from 0 to 1, explain each step, and finally show that the series sum of 1/n^2 "
           "converges and state its value.",
           "Write a Python function that parses a CSV file with quoted fields, handles embedded "
           "newlines, and returns a list of dictionaries. Include unit tests and explain the edge "
           "cases.",
           "Explain step by step how to derive the closed form of the Fibonacci sequence using "
           "generating functions, then prove the identity F(n)^2 - F(n+1)F(n-1) = (-1)^(n-1).",
           "I have a React app where state updates in a useEffect cause an infinite render loop. "
           "Here is my code: useEffect(() => { setItems(items.filter(x => x.active)); }, "
           "[items]); Why does this happen and how do I fix it properly?",
       }) {
    EXPECT_TRUE(model->prefers_cloud(model->score(hard)))
        << model->score(hard) << " < " << model->threshold() << ": " << hard;
  }
  for (const char* trivial :
       {"Hi!", "What is 2 + 2?", "Thanks, that's great.", "What's the capital of France?",
        "Tell me a joke.", "Good morning, how are you?", "Say hello in Spanish."}) {
    EXPECT_FALSE(model->prefers_cloud(model->score(trivial)))
        << model->score(trivial) << " >= " << model->threshold() << ": " << trivial;
  }
}

int run_foreshore(const std::vector<std::string>& args, std::string* out = nullptr,
                  std::string* err = nullptr) {
  std::vector<std::string> argv = {foreshore::testing::foreshore_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  auto p = foreshore::testing::Process::start(argv);
  const auto rc = p->wait(foreshore::testing::time_limit(std::chrono::seconds(300)));
  if (out) *out = p->stdout_text();
  if (err) *err = p->stderr_text();
  return rc.value_or(-1);
}

// The documented held-out measurement: the default model's settings, trained
// without the fixed 9 subjects, scored on them.
TEST(ComplexityDefaultModel, HeldOutSubjectsBeatRandom) {
  const fs::path data = shared_data() / "router-data";
  const fs::path mmlu = data / "routellm" / "mmlu";
  const fs::path routerbench = data / "routerbench-subset";
  if (!fs::exists(mmlu / "mmlu_clinical_knowledge.csv") ||
      !fs::exists(routerbench / "mbpp_train.csv")) {
    GTEST_SKIP() << "router data not found under " << data;
  }
  const std::string model = foreshore::testing::temp_path(".json");
  const std::string svg = foreshore::testing::temp_path(".svg");
  std::string out, err;
  // The threshold does not enter APGR, so skip its calibration fits.
  ASSERT_EQ(run_foreshore({"router",
                           "train",
                           "--data",
                           mmlu.string(),
                           "--data",
                           (routerbench / "arc_challenge_train.csv").string(),
                           "--data",
                           (routerbench / "winograde_train.csv").string(),
                           "--data",
                           (routerbench / "mbpp_train.csv").string(),
                           "--holdout-subjects",
                           "default",
                           "--drop-subjects",
                           "high_school_mathematics",
                           "--l2",
                           "0.03",
                           "--l2-hashed",
                           "0.003",
                           "--calibration-folds",
                           "0",
                           "--out",
                           model},
                          &out, &err),
            0)
      << err;
  ASSERT_EQ(run_foreshore({"router", "eval", "--model", model, "--data", mmlu.string(),
                           "--subjects", "holdout", "--json", "--svg", svg},
                          &out, &err),
            0)
      << err;
  const json r = json::parse(out);
  EXPECT_EQ(r["subjects"].size(), 9u);
  EXPECT_EQ(r["rows_from_training_subjects"], 0);
  EXPECT_GT(r["rows"].get<int>(), 1000);
  EXPECT_GT(r["cloud_quality"].get<double>(), r["edge_quality"].get<double>());
  const double apgr = r["router"]["apgr"].get<double>();
  EXPECT_GT(apgr, r["random"]["apgr"].get<double>());
  EXPECT_GT(apgr, 0.5);
  EXPECT_NEAR(r["random"]["apgr"].get<double>(), 0.5, 0.02);
  EXPECT_TRUE(r["router"]["cpt50"].is_number());
  EXPECT_TRUE(r["router"]["cpt80"].is_number());
  std::ifstream in(svg);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(text.find("<svg"), std::string::npos);
  EXPECT_NE(text.find("<polyline"), std::string::npos);
  fs::remove(svg);
  fs::remove(model);
}

// The router CLI as a new user meets it: typos, duplicates, batch scoring,
// replay (issue 23).
TEST(ComplexityCli, NamesAreCheckedFilesReadOnceAndScoresBatched) {
  const fs::path mmlu = shared_data() / "router-data" / "routellm" / "mmlu";
  if (!fs::exists(mmlu / "mmlu_anatomy.csv")) GTEST_SKIP() << "router data not found";
  const std::string model = std::string(FSH_SOURCE_DIR) + "/data/router/complexity-default.json";
  std::string out, err;
  EXPECT_EQ(run_foreshore({"router", "eval", "--model", model, "--data", mmlu.string(),
                           "--subjects", "anatomy,anatomyy"},
                          &out, &err),
            2);
  EXPECT_NE(err.find("no subject 'anatomyy'; did you mean 'anatomy'?"), std::string::npos) << err;
  const std::string dropped = foreshore::testing::temp_path(".json");
  EXPECT_EQ(run_foreshore({"router", "train", "--data", mmlu.string(), "--drop-subjects",
                           "high_school_math", "--out", dropped},
                          &out, &err),
            2);
  EXPECT_NE(err.find("did you mean 'high_school_mathematics'?"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dropped));
  EXPECT_EQ(run_foreshore({"router", "eval", "--model", model, "--data", mmlu.string(), "--exclude",
                           "/nonexistent/list.jsonl"},
                          &out, &err),
            2);
  EXPECT_NE(err.find("check the path given to --exclude"), std::string::npos) << err;

  // A file given twice, directly and through its folder, is read once.
  ASSERT_EQ(run_foreshore({"router", "eval", "--model", model, "--data", mmlu.string(), "--data",
                           (mmlu / "mmlu_anatomy.csv").string(), "--subjects", "anatomy", "--json",
                           "--random-trials", "10"},
                          &out, &err),
            0)
      << err;
  EXPECT_NE(err.find("mmlu_anatomy.csv was given more than once"), std::string::npos) << err;
  const int twice = json::parse(out)["rows"].get<int>();
  ASSERT_EQ(run_foreshore({"router", "eval", "--model", model, "--data", mmlu.string(),
                           "--subjects", "anatomy", "--json", "--random-trials", "10"},
                          &out, &err),
            0);
  EXPECT_EQ(json::parse(out)["rows"].get<int>(), twice);

  // Batch scoring: JSONL in, one JSON line out per prompt, full precision.
  const std::string batch = foreshore::testing::temp_path(".jsonl");
  write_file(batch,
             "{\"prompt\": \"Hi!\"}\n\"Prove that there are infinitely many primes, then "
             "derive the prime number theorem's error term.\"\n");
  ASSERT_EQ(run_foreshore({"router", "score", "--input", batch}, &out, &err), 0) << err;
  std::istringstream lines(out);
  std::string line;
  std::vector<json> scored;
  while (std::getline(lines, line)) scored.push_back(json::parse(line));
  ASSERT_EQ(scored.size(), 2u);
  EXPECT_EQ(scored[0]["tier"], "edge");
  EXPECT_LT(scored[0]["probability"].get<double>(), scored[1]["probability"].get<double>());
  EXPECT_EQ(scored[1]["line"], 2);
  ASSERT_EQ(run_foreshore({"router", "score", "-p", "Hi!", "--json"}, &out, &err), 0) << err;
  EXPECT_DOUBLE_EQ(json::parse(out)["probability"].get<double>(),
                   scored[0]["probability"].get<double>());
  EXPECT_EQ(run_foreshore({"router", "score", "-p", ""}, &out, &err), 2);
  EXPECT_NE(err.find("-p is empty"), std::string::npos) << err;
  fs::remove(batch);
}

TEST(ComplexityCli, ReplayLearnsFromLabelsAndReportsAgainstStaticAndRandom) {
  const fs::path mmlu = shared_data() / "router-data" / "routellm" / "mmlu";
  if (!fs::exists(mmlu / "mmlu_anatomy.csv")) GTEST_SKIP() << "router data not found";
  const std::string svg = foreshore::testing::temp_path(".svg");
  std::string out, err;
  ASSERT_EQ(run_foreshore({"router", "replay", "--data", mmlu.string(), "--subjects",
                           "anatomy,virology,moral_scenarios,marketing", "--labels", "600",
                           "--seed", "3", "--json", "--svg", svg},
                          &out, &err),
            0)
      << err;
  const json r = json::parse(out);
  EXPECT_EQ(r["labels"], 600);
  EXPECT_EQ(r["evaluated_rows"].get<int>() + 600, r["rows"].get<int>());
  EXPECT_EQ(r["random"]["trials"], 2000);
  for (const char* k : {"router", "static", "oracle", "subject_means"}) {
    EXPECT_TRUE(r[k]["apgr"].is_number()) << k;
  }
  // Routing by the subjects' true mean gains: the subject-level ceiling.
  EXPECT_GT(r["subject_means"]["apgr"].get<double>(), r["random"]["apgr_95"][1].get<double>());
  EXPECT_LT(r["subject_means"]["apgr"].get<double>(), r["oracle"]["apgr"].get<double>());
  // The subjects' means as the labels show them: above chance for subjects
  // this far apart, and never above the true means, the best order of whole
  // subjects.
  const double from_labels = r["subject_means_from_labels"]["apgr"].get<double>();
  EXPECT_GT(from_labels, r["random"]["apgr_95"][1].get<double>());
  EXPECT_LE(from_labels, r["subject_means"]["apgr"].get<double>() + 1e-9);
  EXPECT_TRUE(r["learner"]["neighbour_blend"].is_number());
  // No labels: the learner ranks as the static model.
  EXPECT_EQ(r["learning_curve"].front()["labels"], 0);
  EXPECT_NEAR(r["learning_curve"].front()["apgr"].get<double>(), r["static"]["apgr"].get<double>(),
              1e-9);
  EXPECT_EQ(r["learning_curve"].back()["labels"], 600);
  EXPECT_NEAR(r["learning_curve"].back()["apgr"].get<double>(), r["router"]["apgr"].get<double>(),
              1e-9);
  // Four subjects far apart in gain: the words of 600 labels tell them apart.
  EXPECT_GT(r["router"]["apgr"].get<double>(), r["random"]["apgr_95"][1].get<double>());
  std::ifstream in(svg);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(text.find("<polyline"), std::string::npos);
  fs::remove(svg);

  EXPECT_EQ(run_foreshore({"router", "replay", "--data", (mmlu / "mmlu_anatomy.csv").string(),
                           "--labels", "5000"},
                          &out, &err),
            2);
  EXPECT_NE(err.find("fewer labels"), std::string::npos) << err;
}

// Where the cloud is no better than the edge, APGR measures no routing skill:
// eval and replay say so, and give no random CPT to set beside the router's.
TEST(ComplexityCli, EvalAndReplayWarnWhereTheCloudIsNoBetter) {
  const fs::path dir = foreshore::testing::temp_path("-cloud-worse");
  fs::create_directories(dir);
  std::string csv = "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n";
  for (int i = 0; i < 160; ++i) {
    csv += "\"Question " + std::to_string(i) + " about topic " + std::to_string(i % 7) + "?\"," +
           "True," + (i % 3 == 0 ? "False" : "True") + "\n";
  }
  const std::string data = (dir / "mmlu_cloud_worse.csv").string();
  write_file(data, csv);
  const std::string model = std::string(FSH_SOURCE_DIR) + "/data/router/complexity-default.json";
  for (const std::vector<std::string>& command :
       {std::vector<std::string>{"router", "eval", "--model", model, "--data", data},
        std::vector<std::string>{"router", "replay", "--data", data, "--labels", "60"}}) {
    std::vector<std::string> args = command;
    args.insert(args.end(), {"--random-trials", "50"});
    std::string out, err;
    ASSERT_EQ(run_foreshore(args, &out, &err), 0) << command[1] << ": " << err;
    EXPECT_NE(out.find("warning: the cloud does no better than the edge"), std::string::npos)
        << command[1] << ": " << out;
    args.push_back("--json");
    ASSERT_EQ(run_foreshore(args, &out, &err), 0) << command[1] << ": " << err;
    const json r = json::parse(out);
    EXPECT_FALSE(r["cloud_better"].get<bool>()) << command[1];
    EXPECT_TRUE(r["random"]["cpt50"].is_null()) << command[1];
    EXPECT_TRUE(r["random"]["cpt80"].is_null()) << command[1];
    EXPECT_TRUE(r["router"]["cpt50"].is_null()) << command[1];
  }
  fs::remove_all(dir);
}

TEST(ComplexityCli, TrainWritesALoadableModel) {
  const fs::path dir = foreshore::testing::temp_path("-train");
  fs::create_directories(dir);
  std::string jsonl;
  for (const auto& r : separable_rows(60)) {
    jsonl +=
        json({{"prompt", r.prompt}, {"edge_ok", r.outcome != Outcome::kCloudBetter}}).dump() + "\n";
  }
  write_file((dir / "train.jsonl").string(), jsonl);
  const std::string out = (dir / "m.json").string();
  std::string stdout_text, stderr_text;
  ASSERT_EQ(run_foreshore({"router", "train", "--data", (dir / "train.jsonl").string(), "--out",
                           out, "--target-cloud-share", "0.4", "--hash-bits", "10"},
                          &stdout_text, &stderr_text),
            0)
      << stderr_text;
  auto model = ComplexityModel::load(out);
  ASSERT_TRUE(model.ok()) << model.error().message;
  EXPECT_EQ(model->info().rows, 60);
  EXPECT_NE(model->info().command.find("--target-cloud-share 0.4"), std::string::npos);

  EXPECT_EQ(run_foreshore({"router", "eval", "--model", (dir / "missing.json").string(), "--data",
                           (dir / "train.jsonl").string()},
                          &stdout_text, &stderr_text),
            2);
  EXPECT_NE(stderr_text.find("missing.json"), std::string::npos);
  fs::remove_all(dir);
}

TEST(ComplexityCli, CrossValidatesBySubject) {
  const fs::path dir = foreshore::testing::temp_path("-cv");
  fs::create_directories(dir);
  std::string jsonl;
  for (const auto& r : subject_rows(true)) {
    jsonl += json({{"prompt", r.prompt},
                   {"edge_ok", r.outcome != Outcome::kCloudBetter},
                   {"subject", r.subject}})
                 .dump() +
             "\n";
  }
  write_file((dir / "rows.jsonl").string(), jsonl);
  std::string out, err;
  ASSERT_EQ(run_foreshore(
                {"router", "cv", "--data", (dir / "rows.jsonl").string(), "--folds", "5",
                 "--repeats", "2", "--hash-bits", "10", "--holdout-subjects", "subject9", "--json"},
                &out, &err),
            0)
      << err;
  const json r = json::parse(out);
  EXPECT_EQ(r["rows"], 360);
  EXPECT_EQ(r["subjects"].size(), 9u);
  ASSERT_EQ(r["repeats"].size(), 2u);
  EXPECT_EQ(r["repeats"][0]["folds"].size(), 5u);
  EXPECT_GT(r["mean_apgr"].get<double>(), 0.7);  // the perfect router's is 0.75
  EXPECT_NEAR(r["random"]["apgr"].get<double>(), 0.5, 0.05);

  const std::string scores = (dir / "scores.jsonl").string();
  ASSERT_EQ(run_foreshore({"router", "cv", "--data", (dir / "rows.jsonl").string(), "--folds", "3",
                           "--hash-bits", "10", "--scores-out", scores},
                          &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("3-fold cross-validation by subject on 400 prompts (10 subjects)"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("mean out-of-fold APGR"), std::string::npos);
  // Every row once, scored by the one fold that holds its whole subject.
  std::ifstream lines(scores);
  std::map<std::string, std::set<int>> folds_of_subject;
  int rows = 0;
  for (std::string line; std::getline(lines, line); ++rows) {
    const json row = json::parse(line);
    EXPECT_EQ(row["repeat"], 1);
    folds_of_subject[row["subject"].get<std::string>()].insert(row["fold"].get<int>());
    EXPECT_TRUE(row["prompt"].is_string());
    EXPECT_GT(row["score"].get<double>(), 0.0);
    EXPECT_LT(row["score"].get<double>(), 1.0);
  }
  EXPECT_EQ(rows, 400);
  EXPECT_EQ(folds_of_subject.size(), 10u);
  std::set<int> folds;
  for (const auto& [subject, f] : folds_of_subject) {
    EXPECT_EQ(f.size(), 1u) << subject << " was split between folds";
    folds.insert(f.begin(), f.end());
  }
  EXPECT_EQ(folds, (std::set<int>{1, 2, 3}));

  EXPECT_EQ(
      run_foreshore({"router", "cv", "--data", (dir / "rows.jsonl").string(), "--folds", "20"},
                    &out, &err),
      2);
  EXPECT_NE(err.find("--group row"), std::string::npos) << err;
  fs::remove_all(dir);
}

// A model trained without --holdout-subjects still has held-out subjects on
// new data: the ones it never saw.
TEST(ComplexityCli, EvalHoldoutMeansUnseenSubjects) {
  const fs::path dir = foreshore::testing::temp_path("-unseen");
  fs::create_directories(dir);
  std::string trained, all;
  for (const auto& r : subject_rows(true)) {
    const std::string line = json({{"prompt", r.prompt},
                                   {"edge_ok", r.outcome != Outcome::kCloudBetter},
                                   {"subject", r.subject}})
                                 .dump() +
                             "\n";
    all += line;
    if (r.subject != "subject8" && r.subject != "subject9") trained += line;
  }
  write_file((dir / "trained.jsonl").string(), trained);
  write_file((dir / "all.jsonl").string(), all);
  const std::string model = (dir / "m.json").string();
  std::string out, err;
  ASSERT_EQ(run_foreshore({"router", "train", "--data", (dir / "trained.jsonl").string(),
                           "--hash-bits", "10", "--out", model},
                          &out, &err),
            0)
      << err;
  ASSERT_EQ(run_foreshore({"router", "eval", "--model", model, "--data",
                           (dir / "all.jsonl").string(), "--subjects", "holdout", "--json"},
                          &out, &err),
            0)
      << err;
  const json r = json::parse(out);
  EXPECT_EQ(r["subjects"], json({"subject8", "subject9"}));
  EXPECT_EQ(r["rows"], 80);
  EXPECT_EQ(r["rows_from_training_subjects"], 0);
  EXPECT_NE(err.find("not trained on"), std::string::npos) << err;

  EXPECT_EQ(run_foreshore({"router", "eval", "--model", model, "--data",
                           (dir / "trained.jsonl").string(), "--subjects", "holdout"},
                          &out, &err),
            2);
  EXPECT_NE(err.find("none is held out"), std::string::npos) << err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace foreshore::route
