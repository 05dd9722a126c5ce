#include "route/online_learner.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/test_paths.h"
#include "training/router_training.h"

namespace foreshore::route {
namespace {

std::shared_ptr<const ComplexityModel> shipped() {
  auto m =
      ComplexityModel::load(std::string(FSH_SOURCE_DIR) + "/data/router/complexity-default.json");
  EXPECT_TRUE(m.ok()) << m.error().message;
  return std::make_shared<const ComplexityModel>(std::move(*m));
}

LearnerLabel label(const ComplexityModel& base, const std::string& prompt, double gain,
                   LabelSource source = LabelSource::kFeedback) {
  LearnerLabel l;
  l.features = extract_complexity_features(prompt, base.hashing());
  l.gain = gain;
  l.source = source;
  l.edge_quality = gain > 0.5 ? 0.0 : 1.0;
  l.cloud_quality = 1.0;
  return l;
}

// Questions on two topics of the same shape, so the base model cannot tell
// them apart; the labels say the cloud helps on one and not on the other.
std::string topic_question(bool glacier, int i) {
  const std::string n = std::to_string(i);
  return glacier ? "Which process moves glacier moraine sediment in valley number " + n + "?"
                 : "Which clause governs tenancy lease deposits in contract number " + n + "?";
}

TEST(OnlineLearner, WithoutLabelsItRanksAsTheBaseModel) {
  const auto base = shipped();
  OnlineLearner learner(base, {});
  const std::vector<std::string> prompts = {"hi", "Prove that sqrt(2) is irrational.",
                                            "Write a parser for CSV with tests in C++",
                                            "What is the capital of France?"};
  for (size_t i = 0; i < prompts.size(); ++i) {
    for (size_t j = 0; j < prompts.size(); ++j) {
      EXPECT_EQ(base->score(prompts[i]) < base->score(prompts[j]),
                learner.score(prompts[i]) < learner.score(prompts[j]));
    }
  }
  EXPECT_DOUBLE_EQ(learner.threshold(), base->threshold());
}

TEST(OnlineLearner, WhatItLearnsOfOneQuestionCarriesToSimilarOnes) {
  const auto base = shipped();
  OnlineLearner learner(base, {});
  for (int i = 0; i < 300; ++i) {
    learner.apply(label(*base, topic_question(i % 2 == 0, i), i % 2 == 0 ? 1.0 : 0.0));
  }
  // Questions it never saw, sharing only the topic words.
  const double glacier = learner.score("How does a glacier deposit moraine at its snout?");
  const double lease = learner.score("Can a lease deposit be withheld for tenancy repairs?");
  EXPECT_GT(glacier, lease + 0.2) << glacier << " vs " << lease;
  EXPECT_EQ(learner.stats().labels[static_cast<int>(LabelSource::kFeedback)], 300);
  EXPECT_EQ(learner.snapshot()->version, 300u);
}

// Only the similarity-weighted estimate moves: the residual does not learn
// (step 0) and the estimate replaces the residual's logit entirely.
LearnerOptions neighbours_only() {
  LearnerOptions o;
  o.learning_rate = 0.0;
  o.form_learning_rate = 0.0;
  o.initial_blend = 1.0;
  o.blend_learning_rate = 0.0;
  return o;
}

TEST(OnlineLearner, TheNeighbourEstimateFollowsLabelsOfSimilarPromptsOnly) {
  const auto base = shipped();
  OnlineLearner learner(base, neighbours_only());
  for (int i = 0; i < 100; ++i) {
    learner.apply(label(*base, topic_question(i % 2 == 0, i), i % 2 == 0 ? 1.0 : 0.0));
  }
  const std::string glacier = "How does a glacier deposit moraine at its snout?";
  const std::string lease = "Is a tenancy lease deposit refundable under contract law?";
  const std::string unrelated = "Write a haiku about spring mornings";
  EXPECT_GT(learner.score(glacier), base->score(glacier) + 0.1);
  EXPECT_LT(learner.score(lease), base->score(lease) - 0.1);
  // Sharing no word with any label, it keeps the base model's score.
  EXPECT_NEAR(learner.score(unrelated), base->score(unrelated), 1e-9);
}

TEST(OnlineLearner, CloserNeighboursCountMore) {
  const auto base = shipped();
  // Next to no pull toward the residual, so the votes alone decide.
  LearnerOptions weighted = neighbours_only();
  weighted.neighbour_prior = 1e-3;
  LearnerOptions flat = weighted;
  flat.neighbour_gamma = 0.0;  // every neighbour counts alike
  OnlineLearner by_similarity(base, weighted), alike(base, flat);
  // One label says the cloud helps on a glacier question; six on questions
  // sharing a single word with the probe say it does not.
  for (OnlineLearner* l : {&by_similarity, &alike}) {
    l->apply(label(*base, "Which process moves glacier moraine sediment downhill?", 1.0));
    for (int i = 0; i < 6; ++i) {
      l->apply(label(*base, "Which tax applies to sediment imports " + std::to_string(i), 0.0));
    }
    // Unrelated labels, so that "sediment" is not in every label (its IDF
    // would be 0, and the six would not count at all).
    for (int i = 0; i < 6; ++i) l->apply(label(*base, "Bake bread with rye flour", 0.5));
  }
  const std::string probe = "What process moves glacier moraine sediment?";
  EXPECT_LT(alike.score(probe), 0.2);  // 1 of 7 votes
  EXPECT_GT(by_similarity.score(probe), 0.5);
}

TEST(OnlineLearner, LearnsHowMuchTheNeighbourEstimateCounts) {
  const auto base = shipped();
  OnlineLearner learner(base, {});
  EXPECT_EQ(learner.snapshot()->blend, 0.0);  // no labels: the residual alone
  EXPECT_EQ(learner.stats().blend, 0.0);
  EXPECT_EQ(learner.stats().kept_labels, 0);
  for (int i = 0; i < 300; ++i) {
    learner.apply(label(*base, topic_question(i % 2 == 0, i), i % 2 == 0 ? 1.0 : 0.0));
  }
  EXPECT_GT(learner.snapshot()->blend, 0.05);
  // What `router status` and /metrics show.
  EXPECT_EQ(learner.stats().blend, learner.snapshot()->blend);
  EXPECT_EQ(learner.stats().kept_labels, 300);
  LearnerOptions off;
  off.neighbours = false;
  OnlineLearner residual_only(base, off);
  for (int i = 0; i < 300; ++i) {
    residual_only.apply(label(*base, topic_question(i % 2 == 0, i), i % 2 == 0 ? 1.0 : 0.0));
  }
  EXPECT_EQ(residual_only.snapshot()->blend, 0.0);
  EXPECT_EQ(residual_only.snapshot()->neighbours, nullptr);
}

// With the word weights and neighbours off, the topics alone carry a
// topic's mean gain to its unseen questions; the state keeps their weight.
TEST(OnlineLearner, TopicsCarryATopicsMeanGainToItsOtherQuestions) {
  const auto base = shipped();
  LearnerOptions o;
  o.neighbours = false;
  o.learning_rate = 0.0;
  o.topics = 4;
  OnlineLearner learner(base, o);
  for (int i = 0; i < 200; ++i) {
    learner.apply(label(*base, topic_question(i % 2 == 0, i), i % 2 == 0 ? 1.0 : 0.0));
  }
  const auto s = learner.snapshot();
  ASSERT_NE(s->neighbours, nullptr);
  EXPECT_EQ(s->neighbours->topics, 4u);
  EXPECT_EQ(s->blend, 0.0);  // the neighbour estimate stays off
  EXPECT_GT(learner.score(topic_question(true, 1000)), learner.score(topic_question(false, 1000)));
  EXPECT_GT(learner.score(topic_question(true, 1001)), base->score(topic_question(true, 1001)));

  // Learned with a step, the topic weight is saved; a version 2 state,
  // which has none, starts from the initial weight.
  o.learning_rate = 0.1;
  OnlineLearner stepping(base, o);
  for (int i = 0; i < 200; ++i) {
    stepping.apply(label(*base, topic_question(i % 2 == 0, i), i % 2 == 0 ? 1.0 : 0.0));
  }
  auto doc = nlohmann::json::parse(stepping.to_json());
  EXPECT_NE(doc.at("topic_weight").get<double>(), o.initial_topic_weight);
  OnlineLearner resumed(base, o);
  ASSERT_TRUE(resumed.parse(doc.dump(), "v3.json").ok());
  EXPECT_EQ(resumed.snapshot()->topic_weight, doc.at("topic_weight").get<double>());
  doc["file_version"] = 2;
  doc.erase("topic_weight");
  doc.erase("accum_topic");
  ASSERT_TRUE(resumed.parse(doc.dump(), "v2.json").ok());
  EXPECT_EQ(resumed.snapshot()->topic_weight, o.initial_topic_weight);
}

TEST(OnlineLearner, ItsOwnEstimateScoresEachLabelBeforeLearningIt) {
  const auto base = shipped();
  OnlineLearner learner(base, {});
  EXPECT_FALSE(learner.stats().estimated_apgr.has_value());
  for (int i = 0; i < 400; ++i) {
    learner.apply(label(*base, topic_question(i % 2 == 0, i), i % 2 == 0 ? 1.0 : 0.0));
  }
  const LearnerStats s = learner.stats();
  ASSERT_TRUE(s.estimated_apgr.has_value());
  EXPECT_GT(*s.estimated_apgr, 0.7);  // random ranking: 0.5
  EXPECT_EQ(s.estimate_rows, 400);
}

TEST(OnlineLearner, RecalibratesTheThresholdToTheTargetShareOfTraffic) {
  const auto base = shipped();
  LearnerOptions o;
  o.target_cloud_share = 0.3;
  OnlineLearner learner(base, o);
  std::vector<std::string> traffic;
  for (int i = 0; i < 200; ++i) {
    traffic.push_back(topic_question(i % 3 == 0, i) + std::string(static_cast<size_t>(i % 7), '!'));
    learner.observe_now(extract_complexity_features(traffic.back(), base->hashing()));
  }
  for (int i = 0; i < 50; ++i) {
    learner.apply(label(*base, topic_question(i % 3 == 0, i), i % 3 == 0 ? 1.0 : 0.0));
  }
  int cloud = 0;
  for (const auto& t : traffic) cloud += learner.score(t) >= learner.threshold() ? 1 : 0;
  EXPECT_NEAR(cloud / 200.0, 0.3, 0.05);
}

TEST(OnlineLearner, LabelsFromManyThreadsAreAppliedOffTheRequestPath) {
  const auto base = shipped();
  OnlineLearner learner(base, {});
  learner.start();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        EXPECT_TRUE(learner.submit(label(*base, topic_question(t % 2 == 0, i), t % 2 == 0 ? 1 : 0,
                                         t < 2 ? LabelSource::kShadow : LabelSource::kCascade)));
        // Decisions keep reading snapshots while labels are applied.
        const double p = learner.score(topic_question(true, i));
        EXPECT_TRUE(p >= 0.0 && p <= 1.0);
      }
    });
  }
  for (auto& t : threads) t.join();
  learner.flush();
  const LearnerStats s = learner.stats();
  EXPECT_EQ(s.labels[static_cast<int>(LabelSource::kShadow)], 200);
  EXPECT_EQ(s.labels[static_cast<int>(LabelSource::kCascade)], 200);
  EXPECT_EQ(s.version, 400u);
  learner.stop();
}

TEST(OnlineLearner, AFullQueueDropsLabelsAndCountsThem) {
  const auto base = shipped();
  LearnerOptions o;
  o.max_queue = 3;
  OnlineLearner learner(base, o);  // not started: nothing drains the queue
  for (int i = 0; i < 5; ++i) learner.submit(label(*base, topic_question(true, i), 1.0));
  EXPECT_EQ(learner.stats().dropped, 2);
}

TEST(OnlineLearner, SavesVersionsAndRollsBack) {
  const auto base = shipped();
  const std::string path = testing::temp_path(".learner.json");
  OnlineLearner learner(base, {});
  const std::string probe = "How does a glacier deposit moraine at its snout?";
  for (int i = 0; i < 100; ++i) learner.apply(label(*base, topic_question(true, i), 1.0));
  ASSERT_TRUE(learner.save(path).ok());
  const double after100 = learner.score(probe);
  for (int i = 0; i < 100; ++i) learner.apply(label(*base, topic_question(true, i), 0.0));
  ASSERT_TRUE(learner.save(path).ok());
  const double after200 = learner.score(probe);
  ASSERT_NE(after100, after200);

  OnlineLearner restored(base, {});
  ASSERT_TRUE(restored.load(path).ok());
  EXPECT_NEAR(restored.score(probe), after200, 1e-6);
  EXPECT_EQ(restored.stats().version, 200u);
  // And learning continues from where it was.
  restored.apply(label(*base, topic_question(true, 1), 1.0));
  EXPECT_EQ(restored.stats().version, 201u);

  EXPECT_EQ(saved_learner_versions(path), std::vector<uint64_t>{100});
  ASSERT_TRUE(rollback_learner_state(path, 100).ok());
  OnlineLearner rolled(base, {});
  ASSERT_TRUE(rolled.load(path).ok());
  EXPECT_NEAR(rolled.score(probe), after100, 1e-6);
  // The state rolled back from is kept, so the rollback can be undone.
  EXPECT_EQ(saved_learner_versions(path), (std::vector<uint64_t>{200, 100}));
  const Status missing = rollback_learner_state(path, 7);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("versions kept: 200, 100"), std::string::npos)
      << missing.error().message;
  ASSERT_TRUE(rollback_learner_state(path, 200).ok());
  OnlineLearner undone(base, {});
  ASSERT_TRUE(undone.load(path).ok());
  EXPECT_NEAR(undone.score(probe), after200, 1e-6);
  std::filesystem::remove(path);
  std::filesystem::remove(path + ".v100");
  std::filesystem::remove(path + ".v200");
}

TEST(OnlineLearner, RefusesAStateLearnedOverOtherHashingOrCorrupt) {
  const auto base = shipped();
  OnlineLearner learner(base, {});
  learner.apply(label(*base, topic_question(true, 1), 1.0));
  std::string text = learner.to_json();
  const std::string bits = "\"bits\":" + std::to_string(base->hashing().bits);
  ASSERT_NE(text.find(bits), std::string::npos);
  text.replace(text.find(bits), bits.size(), "\"bits\":9");
  OnlineLearner other(base, {});
  const Status s = other.parse(text, "state.json");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("state.json"), std::string::npos);
  EXPECT_NE(s.error().message.find("hashing"), std::string::npos);
  const Status c = other.parse("{\"format\": \"foreshore.router-learner\"}", "state.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("file_version"), std::string::npos);
  EXPECT_EQ(other.stats().version, 0u);  // a refused file changes nothing
}

TEST(OnlineLearner, LoadsAVersion1StateWithoutTheNeighbourBlend) {
  const auto base = shipped();
  OnlineLearner learner(base, {});
  for (int i = 0; i < 100; ++i) {
    learner.apply(label(*base, topic_question(i % 2 == 0, i), i % 2 == 0 ? 1.0 : 0.0));
  }
  auto doc = nlohmann::json::parse(learner.to_json());
  ASSERT_GT(doc.at("blend").get<double>(), 0.0);
  doc["file_version"] = 1;
  doc.erase("blend");
  doc.erase("accum_blend");
  doc.erase("topic_weight");
  doc.erase("accum_topic");
  OnlineLearner old(base, {});
  ASSERT_TRUE(old.parse(doc.dump(), "v1.json").ok());
  EXPECT_EQ(old.snapshot()->blend, 0.0);
  EXPECT_EQ(old.stats().version, 100u);
  // Its kept labels are searchable again: the blend can grow from there.
  EXPECT_NE(old.snapshot()->neighbours, nullptr);

  doc["file_version"] = 6;
  const Status newer = old.parse(doc.dump(), "v6.json");
  ASSERT_FALSE(newer.ok());
  EXPECT_NE(newer.error().message.find("newer foreshore"), std::string::npos);
}

// Words drawn from one vocabulary for every prompt, in a random number of
// them, so only the prompt's form tells the labels apart: whether it is
// written over several lines (a worked, multi-part problem) or as one. The
// length is noise the shipped model weighs, and it weighs lines against the
// cloud, so no rescaling of its logit ranks these prompts.
std::string word_problem(std::mt19937& rng, bool several_lines) {
  static const std::vector<std::string> words = {
      "apples", "train",  "farmer", "bought", "each",   "left",   "price",  "weeks",
      "baker",  "shared", "boxes",  "pencil", "garden", "miles",  "ticket", "total",
      "coins",  "sold",   "half",   "more",   "than",   "friend", "market", "hours"};
  const int count = 8 + static_cast<int>(rng() % 33);
  std::string out;
  for (int i = 0; i < count; ++i) {
    out += words[rng() % words.size()];
    out += several_lines && i % 4 == 3 ? "\n" : " ";
  }
  return out + "?";
}

// A learner given `count` labels from `make(rng, harder)`, harder (target 1)
// and easier (0) in turn.
template <typename Make>
std::unique_ptr<OnlineLearner> learned_on(const LearnerOptions& options, std::mt19937& rng,
                                          int count, Make make) {
  const auto base = shipped();
  auto learner = std::make_unique<OnlineLearner>(base, options);
  for (int i = 0; i < count; ++i) {
    const bool harder = i % 2 == 0;
    learner->apply(label(*base, make(rng, harder), harder ? 1.0 : 0.0));
  }
  return learner;
}

// The share of (several lines, one line) pairs of unseen prompts the learner
// ranks several lines first.
double form_ranking(const LearnerOptions& options) {
  std::mt19937 rng(7);
  const auto learned = learned_on(options, rng, 400, word_problem);
  const OnlineLearner& learner = *learned;
  std::vector<double> long_scores, short_scores;
  for (int i = 0; i < 40; ++i) {
    long_scores.push_back(learner.score(word_problem(rng, true)));
    short_scores.push_back(learner.score(word_problem(rng, false)));
  }
  int ordered = 0;
  for (double l : long_scores)
    for (double s : short_scores) ordered += l > s;
  return static_cast<double>(ordered) / (long_scores.size() * short_scores.size());
}

TEST(OnlineLearner, FormFeaturesLearnWhatThePromptsShapeSaysWhereWordsCannot) {
  LearnerOptions with, without;
  with.neighbours = without.neighbours = false;
  without.form_features = false;
  const double learned = form_ranking(with);
  const double words_only = form_ranking(without);
  EXPECT_GT(learned, 0.95) << "words only: " << words_only;
  EXPECT_GT(learned, words_only + 0.1) << learned << " vs " << words_only;
}

// Every prompt the same kind of question with the same words, of nearly the
// same size: the label is whether it runs to 46 words or 38. Where chat
// prompts sit, that difference is a fifth of a standard deviation; among
// this deployment's own prompts it is two.
std::string sized_problem(std::mt19937& rng, bool longer) {
  static const std::vector<std::string> words = {"farmer", "sold", "baskets", "of",  "apples",
                                                 "then",   "each", "market",  "day", "kept"};
  std::string out;
  for (int i = 0, n = longer ? 46 : 38; i < n; ++i) out += words[rng() % words.size()] + " ";
  return out + "how many are left?";
}

// How many of 30 (longer, shorter) pairs of unseen prompts the learner
// ranks longer first after 150 labels; `spread` receives the spread it
// measures the prompts' length against.
int size_ranking(const LearnerOptions& options, double* spread = nullptr) {
  std::mt19937 rng(11);
  const auto learned = learned_on(options, rng, 150, sized_problem);
  const OnlineLearner& learner = *learned;
  int ordered = 0;
  for (int i = 0; i < 30; ++i) {
    ordered += learner.score(sized_problem(rng, true)) > learner.score(sized_problem(rng, false));
  }
  if (spread) *spread = learner.snapshot()->form_spread[static_cast<int>(DenseFeature::kLogChars)];
  const auto weights = learner.stats().form_weights;
  if (options.form_features) {
    // What it says it learned: longer is harder, in one of the size features.
    EXPECT_EQ(weights.size(), 12u);
    EXPECT_TRUE(weights[0].first == "log_chars" || weights[0].first == "log_words" ||
                weights[0].first == "log_tokens_est")
        << weights[0].first;
    EXPECT_GT(weights[0].second, 0.0);
  } else {
    EXPECT_TRUE(weights.empty());
  }
  return ordered;
}

TEST(OnlineLearner, FormIsMeasuredAgainstTheDeploymentsOwnPrompts) {
  LearnerOptions options, words_only;
  options.neighbours = words_only.neighbours = false;
  words_only.form_features = false;
  double spread = 1.0;
  const int learned = size_ranking(options, &spread);
  const int without = size_ranking(words_only);
  EXPECT_GE(learned, 28) << "words only: " << without;
  EXPECT_GT(learned, without + 3);
  // In the base model's standard deviations (1 before any label).
  EXPECT_LT(spread, 0.5);
}

TEST(OnlineLearner, FormWeightsAreSavedAndOlderStatesLoadWithout) {
  const auto base = shipped();
  OnlineLearner learner(base, {});
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    learner.apply(label(*base, word_problem(rng, i % 2 == 0), i % 2 == 0 ? 1.0 : 0.0));
  }
  const std::string probe = word_problem(rng, true);
  OnlineLearner restored(base, {});
  ASSERT_TRUE(restored.parse(learner.to_json(), "v5.json").ok());
  EXPECT_NEAR(restored.score(probe), learner.score(probe), 1e-6);
  // It goes on learning from where it was saved.
  std::mt19937 more(5);
  for (int i = 0; i < 20; ++i) {
    const auto next = label(*base, word_problem(more, i % 2 == 0), i % 2 == 0 ? 1.0 : 0.0);
    learner.apply(next);
    restored.apply(next);
  }
  EXPECT_NEAR(restored.score(probe), learner.score(probe), 1e-6);

  // Version 4 weighed the form on the base model's scale: its weights are
  // not carried over, its kept labels' form values are.
  auto v4 = nlohmann::json::parse(learner.to_json());
  v4["file_version"] = 4;
  v4.erase("form_fitted");
  v4.erase("form_steps");
  OnlineLearner from_v4(base, {});
  ASSERT_TRUE(from_v4.parse(v4.dump(), "v4.json").ok());
  for (double w : from_v4.snapshot()->form_weights) EXPECT_EQ(w, 0.0);
  // Measured against its kept labels, as they stand.
  EXPECT_NE(from_v4.snapshot()->form_centre, DenseVector{});

  auto doc = nlohmann::json::parse(learner.to_json());
  doc["file_version"] = 3;
  doc.erase("form_weights");
  doc.erase("accum_form");
  for (auto& k : doc["kept"]) k.erase("form");
  OnlineLearner old(base, {});
  ASSERT_TRUE(old.parse(doc.dump(), "v3.json").ok());
  for (double w : old.snapshot()->form_weights) EXPECT_EQ(w, 0.0);
  EXPECT_EQ(old.stats().version, 220u);

  auto broken = nlohmann::json::parse(learner.to_json());
  broken["form_weights"] = {1.0, 2.0};
  const Status s = old.parse(broken.dump(), "short.json");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("form_weights"), std::string::npos) << s.error().message;
  EXPECT_EQ(old.stats().version, 220u);  // a refused file changes nothing
}

}  // namespace
}  // namespace foreshore::route
