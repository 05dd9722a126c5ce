#include "route/complexity.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "route/router_training.h"
#include "support/process.h"
#include "support/test_paths.h"

namespace sy::route {
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
  return fs::path(SY_SHARED_DATA_DIR);
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
  const std::string path = sy::testing::temp_path(".json");
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
  const fs::path dir = sy::testing::temp_path("-mmlu");
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

TEST(ComplexityData, ReadsJsonlRouterBenchAndMtBench) {
  const fs::path dir = sy::testing::temp_path("-data");
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
             ",sample_id,prompt,eval_name,mistralai/mistral-7b-chat,gpt-4-1106-preview\n"
             "0,x.1,\"['Write a python function.\\nReturn it.']\",mbpp,0.0,1.0\n"
             "1,x.2,\"['q']\",mbpp,,1.0\n");
  LoadReport report;
  auto rb = load_labelled_prompts({(dir / "rb.csv").string()}, DataOptions{}, &report);
  ASSERT_TRUE(rb.ok()) << rb.error().message;
  ASSERT_EQ(rb->size(), 1u);
  EXPECT_EQ((*rb)[0].prompt, "Write a python function.\nReturn it.");
  EXPECT_EQ((*rb)[0].subject, "mbpp");
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

// ---- the shipped model, end to end ------------------------------------------------------

TEST(ComplexityDefaultModel, LoadsAndRecordsTheSplit) {
  auto model =
      ComplexityModel::load(std::string(SY_SOURCE_DIR) + "/data/router/complexity-default.json");
  ASSERT_TRUE(model.ok()) << model.error().message;
  EXPECT_EQ(model->info().holdout_subjects, default_holdout_subjects());
  for (const auto& s : model->info().holdout_subjects) {
    const auto& trained = model->info().training_subjects;
    EXPECT_EQ(std::find(trained.begin(), trained.end(), s), trained.end()) << s;
  }
  const double p = model->score("What is 2 + 2?");
  EXPECT_GE(p, 0.0);
  EXPECT_LE(p, 1.0);
}

TEST(ComplexityDefaultModel, EvalOnHeldOutSubjectsBeatsRandom) {
  const fs::path mmlu = shared_data() / "router-data" / "routellm" / "mmlu";
  if (!fs::exists(mmlu / "mmlu_clinical_knowledge.csv")) {
    GTEST_SKIP() << "RouteLLM MMLU data not found at " << mmlu;
  }
  const std::string svg = sy::testing::temp_path(".svg");
  auto p = sy::testing::Process::start(
      {sy::testing::switchyard_binary(), "router", "eval", "--model",
       std::string(SY_SOURCE_DIR) + "/data/router/complexity-default.json", "--data", mmlu.string(),
       "--subjects", "holdout", "--json", "--svg", svg});
  const auto rc = p->wait(std::chrono::seconds(240));
  ASSERT_TRUE(rc.has_value());
  ASSERT_EQ(*rc, 0) << p->stderr_text();
  const json r = json::parse(p->stdout_text());
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
}

TEST(ComplexityCli, TrainWritesALoadableModel) {
  const fs::path dir = sy::testing::temp_path("-train");
  fs::create_directories(dir);
  std::string jsonl;
  for (const auto& r : separable_rows(60)) {
    jsonl +=
        json({{"prompt", r.prompt}, {"edge_ok", r.outcome != Outcome::kCloudBetter}}).dump() + "\n";
  }
  write_file((dir / "train.jsonl").string(), jsonl);
  const std::string out = (dir / "m.json").string();
  auto p = sy::testing::Process::start({sy::testing::switchyard_binary(), "router", "train",
                                        "--data", (dir / "train.jsonl").string(), "--out", out,
                                        "--target-cloud-share", "0.4", "--hash-bits", "10"});
  const auto rc = p->wait(std::chrono::seconds(120));
  ASSERT_TRUE(rc.has_value());
  ASSERT_EQ(*rc, 0) << p->stderr_text();
  auto model = ComplexityModel::load(out);
  ASSERT_TRUE(model.ok()) << model.error().message;
  EXPECT_EQ(model->info().rows, 60);
  EXPECT_NE(model->info().command.find("--target-cloud-share 0.4"), std::string::npos);

  auto bad = sy::testing::Process::start({sy::testing::switchyard_binary(), "router", "eval",
                                          "--model", (dir / "missing.json").string(), "--data",
                                          (dir / "train.jsonl").string()});
  const auto bad_rc = bad->wait(std::chrono::seconds(60));
  ASSERT_TRUE(bad_rc.has_value());
  EXPECT_EQ(*bad_rc, 2);
  EXPECT_NE(bad->stderr_text().find("missing.json"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sy::route
