// The foreshore binary's front end as a newcomer meets it: `route --explain`
// against the server's own POST /v1/route, suggestions for mistyped
// commands, help that names real config keys, and shipped files found from
// any working directory. Real processes throughout.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "support/emulator.h"
#include "support/fault_server.h"
#include "support/process.h"
#include "support/test_paths.h"

namespace foreshore::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A folder of its own, removed afterwards; the working directory of runs that
// must not depend on starting in the checkout.
class TempDir {
 public:
  TempDir() : path_(temp_path("-cli")) { fs::create_directories(path_); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string write(const std::string& name, const std::string& text) const {
    const std::string p = (fs::path(path_) / name).string();
    std::ofstream(p) << text;
    return p;
  }

 private:
  std::string path_;
};

std::string stories_path() {
  return (fs::path(shared_models_dir()) / "stories260K.gguf").string();
}

// An edge tier on stories260K and a cloud tier that is never contacted: the
// decision needs its description, not an answer from it.
std::string gateway_yaml() {
  return "tiers:\n"
         "  edge:\n"
         "    kind: embedded\n"
         "    model: " +
         stories_path() +
         "\n"
         "    threads: 1\n"
         "  cloud:\n"
         "    kind: openai\n"
         "    placement: cloud\n"
         "    model: gpt-4o-mini\n"
         "    endpoint: http://127.0.0.1:9/v1\n"
         "    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}\n"
         "routing:\n"
         "  policy: threshold\n";
}

// What differs between two explanations of one request: its id and timing.
json without_run_specifics(json j) {
  j.erase("id");
  j.erase("decision_us");
  return j;
}

TEST(CliRoute, ExplainJsonIsWhatTheServerAnswers) {
  TempDir dir;
  const std::string config = dir.write("gateway.yaml", gateway_yaml());
  const std::string prompt = "My card is 4111 1111 1111 1111, explain compound interest";
  // From a folder with nothing of the checkout in it.
  const auto cli = run_foreshore_in(
      dir.path(), {"route", "--explain", "--config", config, "-p", prompt, "--json"});
  ASSERT_EQ(cli.status, 0) << cli.err;
  const json offline = json::parse(cli.out);

  ServeProcess gw({"--config", config});
  ASSERT_TRUE(gw.ok()) << gw.process().stderr_text();
  const json body = {{"model", "foreshore"},
                     {"messages", json::array({{{"role", "user"}, {"content", prompt}}})}};
  const auto served = http_post(gw.port(), "/v1/route", body.dump());
  ASSERT_EQ(served.status, 200) << served.body;

  EXPECT_EQ(without_run_specifics(offline), without_run_specifics(served.json()));
  EXPECT_EQ(offline["signals"]["sensitivity"]["data_class"], "device-only");
  EXPECT_EQ(offline["plan"]["kind"], "edge");
  EXPECT_FALSE(offline["plan"]["cloud_allowed"].get<bool>());
  EXPECT_FALSE(offline["alternatives"].empty());
}

TEST(CliRoute, ExplainTextNamesSignalsRulesPlanAndAlternatives) {
  TempDir dir;
  const std::string config = dir.write("gateway.yaml", gateway_yaml());
  const auto r = run_foreshore_in(dir.path(), {"route", "--explain", "--config", config, "-p",
                                               "Hello there", "--policy", "foreshore/cascade"});
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* needle : {"policy cascade", "plan:", "signals:", "sensitivity: public",
                             "complexity:", "rules fired:", "alternatives:"}) {
    EXPECT_NE(r.out.find(needle), std::string::npos) << needle << "\n" << r.out;
  }
}

// The refusal is explained, not raised: the plan is the 403 a chat request gets.
TEST(CliRoute, DeviceOnlyDataAskedForTheCloudIsRefused) {
  TempDir dir;
  const std::string config = dir.write("gateway.yaml", gateway_yaml());
  const auto r =
      run_foreshore_in(dir.path(), {"route", "--explain", "--config", config, "-p",
                                    "My SSN is 123-45-6789", "--tier", "cloud", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["plan"]["kind"], "reject") << r.out;
  EXPECT_NE(j["plan"]["reason"].get<std::string>().find("refused"), std::string::npos) << r.out;
  const auto& rules = j["rules_fired"];
  EXPECT_NE(std::find(rules.begin(), rules.end(), "device-only-stays-local"), rules.end()) << r.out;
}

TEST(CliRoute, BadHintIsAnErrorWithTheServersStatus) {
  const auto r = run_foreshore({"route", "--explain", "-p", "Hi", "--data-class", "secret",
                                "--upstream", "http://127.0.0.1:9/v1"});
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.err.find("HTTP 400"), std::string::npos) << r.err;
}

TEST(CliRoute, WithoutExplainItSaysWhatIsMissing) {
  const auto r = run_foreshore({"route", "-p", "Hi"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--explain"), std::string::npos) << r.err;
}

TEST(CliCommands, UnknownSubcommandSuggestsTheNearest) {
  auto r = run_foreshore({"rout", "--explain"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("did you mean 'route'?"), std::string::npos) << r.err;
  r = run_foreshore({"reprot"});
  EXPECT_NE(r.err.find("did you mean 'report'?"), std::string::npos) << r.err;
  r = run_foreshore({"router", "scroe"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("did you mean 'score'?"), std::string::npos) << r.err;
  // Far from every name: no guess, but the list.
  r = run_foreshore({"xylophone"});
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err.find("did you mean"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("commands: run bench serve"), std::string::npos) << r.err;
}

// A numeric option out of its range is refused saying what it must be, not
// as a range up to the largest double.
TEST(CliCommands, NumericOptionsOutOfRangeSayWhatTheyMustBe) {
  auto r = run_foreshore({"router", "replay", "--data", "x.csv", "--neighbour-k", "0"});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("--neighbour-k: '0' is not above 0"), std::string::npos) << r.err;
  r = run_foreshore({"router", "replay", "--data", "x.csv", "--l2", "-1"});
  EXPECT_NE(r.err.find("--l2: '-1' is not 0 or more"), std::string::npos) << r.err;
  r = run_foreshore({"router", "replay", "--data", "x.csv", "--l2", "lots"});
  EXPECT_NE(r.err.find("'lots' is not a number"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("179769"), std::string::npos) << r.err;
  // A thread count the system cannot give used to abort the process, and -1
  // was taken as "one per core".
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"run", "-p", "hi", "-n", "2", "-t", "100000"},
        std::vector<std::string>{"serve", "-m", "stories260K", "-t", "100000"},
        std::vector<std::string>{"quantize", "a.gguf", "b.gguf", "-t", "-1"},
        std::vector<std::string>{"run", "-p", "hi", "-n", "2", "-t", "2.5"}}) {
    r = run_foreshore(args);
    EXPECT_EQ(r.status, 2) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find("is not a whole number from 0 (one per core) to 1024"), std::string::npos)
        << args[0] << ": " << r.err;
  }
  // Sampling values the API refuses are refused here too; NaN included.
  r = run_foreshore({"run", "-p", "hi", "-n", "2", "--temp", "nan"});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("--temp: 'nan' is not between 0 and 2"), std::string::npos) << r.err;
  r = run_foreshore({"run", "-p", "hi", "-n", "2", "--top-p", "5"});
  EXPECT_NE(r.err.find("--top-p: '5' is not between 0 and 1"), std::string::npos) << r.err;
  // -p with --chat would be ignored; an empty -p is said to be empty.
  r = run_foreshore({"run", "--chat", "-p", "hi"});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("--prompt excludes --chat"), std::string::npos) << r.err;
  r = run_foreshore({"run", "-p", ""});
  EXPECT_NE(r.err.find("-p is empty"), std::string::npos) << r.err;
}

// `run` reads its prompt from a pipe, as `route` and `router score` do.
TEST(CliRun, ReadsThePromptFromAPipe) {
  auto p =
      Process::start({"bash", "-c", "printf 'Once upon a time' | \"$0\" run -n 4 --temp 0 -t 1",
                      foreshore_binary()});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->wait(time_limit(std::chrono::seconds(60))), 0) << p->stderr_text();
  EXPECT_TRUE(p->stdout_text().starts_with("Once upon a time")) << p->stdout_text();
  EXPECT_GT(p->stdout_text().size(), std::string("Once upon a time").size()) << p->stdout_text();
}

// A prompt too long for the context: the echoed prompt's line ends before
// the error, which starts its own line on stderr.
TEST(CliRun, AContextErrorAfterTheEchoedPromptEndsTheLine) {
  const auto r = run_foreshore(
      {"run", "-p", "Once upon a time there was a big dog", "-c", "4", "-n", "4", "-t", "1"});
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_EQ(r.out, "Once upon a time there was a big dog\n");
  EXPECT_NE(r.err.find("]\nerror: the prompt has"), std::string::npos) << r.err;
}

// A conversation that outgrows the context drops its oldest exchanges and
// goes on; a message too long even alone is refused and the session goes on.
TEST(CliRun, ChatKeepsTheSessionWhenTheContextFills) {
  std::string long_line;
  for (int i = 0; i < 60; ++i) long_line += "dog ";
  auto p = Process::start(
      {"bash", "-c",
       "printf '%s\\nOnce upon a time there was\\nand then the dog ran away\\nwhat happened "
       "next\\n' \"$1\" | \"$0\" run --chat -c 40 -n 20 --temp 0 -t 1",
       foreshore_binary(), long_line});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->wait(time_limit(std::chrono::seconds(60))), 0) << p->stderr_text();
  const std::string err = p->stderr_text();
  EXPECT_NE(err.find("it was dropped, the session goes on"), std::string::npos) << err;
  EXPECT_NE(err.find("the conversation outgrew the context of 40 tokens"), std::string::npos)
      << err;
  size_t turns = 0;
  for (size_t at = 0; (at = err.find("[prompt:", at)) != std::string::npos; ++at) ++turns;
  EXPECT_EQ(turns, 3u) << err;
}

// --seed -1 draws a random seed and says which (llama.cpp's convention);
// other values outside 0..2^32-1 are refused, not wrapped into a fixed seed.
TEST(CliRun, SeedMinusOneIsRandomAndOutOfRangeSeedsAreRefused) {
  const auto seeded = run_foreshore({"run", "-p", "Once", "-n", "8", "--seed", "-1", "-t", "1"});
  ASSERT_EQ(seeded.status, 0) << seeded.err;
  const size_t at = seeded.err.find("[seed ");
  ASSERT_NE(at, std::string::npos) << seeded.err;
  const std::string seed = seeded.err.substr(at + 6, seeded.err.find(']', at) - at - 6);
  // The printed seed reproduces the run.
  const auto again = run_foreshore({"run", "-p", "Once", "-n", "8", "--seed", seed, "-t", "1"});
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_EQ(again.out, seeded.out);
  EXPECT_EQ(again.err.find("[seed "), std::string::npos);
  for (const char* bad : {"-2", "4294967296", "18446744073709551616", "1.5", "x"}) {
    const auto r = run_foreshore({"run", "-p", "Once", "-n", "2", "--seed", bad});
    EXPECT_EQ(r.status, 2) << bad << ": " << r.err;
    EXPECT_NE(r.err.find("is not -1 (a random seed) or a whole number from 0 to 4294967295"),
              std::string::npos)
        << bad << ": " << r.err;
  }
  EXPECT_EQ(run_foreshore({"run", "-p", "Once", "-n", "2", "--seed", "4294967295"}).status, 0);
}

// Bad usage exits 2 whatever CLI11 found wrong; help and version exit 0.
TEST(CliCommands, BadUsageExitsTwo) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"router", "replay"},                           // a required option
        std::vector<std::string>{"router", "replay", "--data", "x", "--nope"},  // unknown
        std::vector<std::string>{"router", "replay", "--data", "x", "--order", "up"},
        std::vector<std::string>{"run", "-m"}}) {  // no value
    const auto r = run_foreshore(args);
    EXPECT_EQ(r.status, 2) << args.back() << ": " << r.err;
    EXPECT_FALSE(r.err.empty()) << args.back();
  }
  EXPECT_EQ(run_foreshore({"router", "replay", "--help"}).status, 0);
  EXPECT_EQ(run_foreshore({"--version"}).status, 0);
}

TEST(CliReport, HelpAndErrorNameTheRealConfigKey) {
  auto r = run_foreshore({"report", "--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("server.audit_db"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("audit.path"), std::string::npos) << r.out;
  r = run_foreshore({"report", "--db", temp_path(".db")});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("server.audit_db"), std::string::npos) << r.err;
}

// Shipped files are found from the binary, not the working directory: a user
// in their home folder runs the default model and the shipped router.
TEST(CliPaths, ShippedDataIsFoundFromAnyWorkingDirectory) {
  const fs::path beside_checkout =
      (fs::path(FSH_SOURCE_DIR).parent_path() / "shared" / "data" / "models").lexically_normal();
  if (fs::path(shared_models_dir()).lexically_normal() != beside_checkout) {
    GTEST_SKIP() << "the shared models are not beside the checkout (" << shared_models_dir()
                 << "), where a build tree's binary looks for them";
  }
  TempDir dir;
  // An empty FORESHORE_MODEL_PATH is the default search path.
  const std::vector<std::string> env = {"FORESHORE_MODEL_PATH=", "FORESHORE_DATA_DIR="};
  auto r = run_foreshore_in(dir.path(), {"run", "-p", "Once upon a time", "-n", "4", "--temp", "0"},
                            env);
  EXPECT_EQ(r.status, 0) << r.err;
  // Named by the file: its general.name is only the architecture, "llama".
  EXPECT_NE(r.err.find("[model stories260K (llama,"), std::string::npos) << r.err;
  r = run_foreshore_in(dir.path(), {"router", "score", "-p", "What is 2 + 2?"}, env);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("threshold"), std::string::npos) << r.out;
  r = run_foreshore_in(dir.path(), {"route", "--explain", "-p", "Hi", "--json"}, env);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(json::parse(r.out)["signals"]["edge_available"].get<bool>()) << r.out << r.err;
}

// An installed binary (<prefix>/bin/foreshore) finds the shipped data in
// <prefix>/share/foreshore, the layout `cmake --install` writes.
TEST(CliPaths, InstalledLayoutFindsItsData) {
  TempDir prefix;
  TempDir elsewhere;
  const fs::path bin = fs::path(prefix.path()) / "bin";
  const fs::path share = fs::path(prefix.path()) / "share" / "foreshore" / "router";
  fs::create_directories(bin);
  fs::create_directories(share);
  fs::copy_file(foreshore_binary(), bin / "foreshore");
  fs::copy_file(fs::path(FSH_SOURCE_DIR) / "data" / "router" / "complexity-default.json",
                share / "complexity-default.json");
  auto p = Process::start({(bin / "foreshore").string(), "router", "score", "-p", "Hi"},
                          {"FORESHORE_DATA_DIR="}, elsewhere.path());
  ASSERT_TRUE(p);
  EXPECT_EQ(p->wait(time_limit(std::chrono::seconds(60))), 0) << p->stderr_text();
  EXPECT_NE(p->stdout_text().find("threshold"), std::string::npos) << p->stdout_text();
}

// Without the shipped complexity model the router would read every prompt as
// simple and send it all to the edge, unnoticed: the start fails instead and
// says where it looked and what to set.
TEST(CliPaths, AMissingShippedModelIsAnErrorNotBlindRouting) {
  TempDir prefix;
  const fs::path bin = fs::path(prefix.path()) / "bin";
  fs::create_directories(bin);
  fs::copy_file(foreshore_binary(), bin / "foreshore");
  auto p = Process::start(
      {(bin / "foreshore").string(), "route", "--explain", "-m", "stories260K", "-p", "Hi"},
      {"FORESHORE_DATA_DIR=", "FORESHORE_MODEL_PATH=" + shared_models_dir()}, prefix.path());
  ASSERT_TRUE(p);
  EXPECT_NE(p->wait(time_limit(std::chrono::seconds(60))), 0) << p->stdout_text();
  EXPECT_NE(p->stderr_text().find("FORESHORE_DATA_DIR"), std::string::npos) << p->stderr_text();
  EXPECT_NE(p->stderr_text().find("complexity_model"), std::string::npos) << p->stderr_text();
}

// Every examples/*.yaml builds a gateway, once the files and variables it
// names exist: route --explain loads the tiers and the router as serve does.
TEST(CliExamples, EveryExampleConfigBuildsAGateway) {
  FaultServer::Options tls;
  tls.tls = true;
  FaultServer lan(tls);  // only for its CA file, which llama-server.yaml names
  TempDir dir;
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(FSH_SOURCE_DIR) / "examples")) {
    if (entry.path().extension() != ".yaml") continue;
    std::ifstream in(entry.path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string ca = "/etc/foreshore/lan-ca.pem";
    if (const size_t at = text.find(ca); at != std::string::npos) {
      text.replace(at, ca.size(), lan.ca_file());
    }
    const std::string config = dir.write(entry.path().filename().string(), text);
    const auto r = run_foreshore_in(
        dir.path(), {"route", "--explain", "--config", config, "-p", "Hello", "--json"},
        {"OPENAI_API_KEY=sk-test", "FORESHORE_MODEL_PATH=" + shared_models_dir()});
    EXPECT_EQ(r.status, 0) << entry.path() << ": " << r.err;
    ++checked;
  }
  EXPECT_GE(checked, 5);
}

// ---- README commands --------------------------------------------------------------

// The commands of a Markdown file's ```sh blocks, one per entry:
// continuation lines joined, trailing comments cut.
std::vector<std::string> doc_commands(const fs::path& markdown) {
  std::ifstream in(markdown);
  std::vector<std::string> commands;
  std::string line, command;
  bool in_block = false;
  while (std::getline(in, line)) {
    if (line.starts_with("```")) {
      in_block = line == "```sh";
      continue;
    }
    if (!in_block) continue;
    // A comment starts at a '#' after a space, outside quotes.
    char quote = 0;
    for (size_t i = 0; i < line.size(); ++i) {
      if (quote != 0) {
        if (line[i] == quote) quote = 0;
      } else if (line[i] == '"' || line[i] == '\'') {
        quote = line[i];
      } else if (line[i] == '#' && (i == 0 || line[i - 1] == ' ')) {
        line.resize(i);
        break;
      }
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    const bool continued = !line.empty() && line.back() == '\\';
    if (continued) line.pop_back();
    command += line;
    if (continued) continue;
    if (command.find_first_not_of(' ') != std::string::npos) {
      commands.push_back(command.substr(command.find_first_not_of(' ')));
    }
    command.clear();
  }
  return commands;
}

// Which README commands the test runs. The first rule whose prefix matches
// decides; a command no rule matches fails the test, so a new one gets a
// decision. A reason means the command is not run, and says why.
struct ReadmeRule {
  const char* prefix;
  const char* skip_reason;  // nullptr: run it
};
constexpr ReadmeRule kReadmeRules[] = {
    {"scripts/", "installs packages and builds: what CI runs (scripts/test.sh is this suite)"},
    {"build/foreshore serve", "serves until stopped; gateway_e2e_test starts it the same way"},
    {"build/foreshore bench", "measures speed: nothing to pass or fail"},
    {"build/foreshore report --db audit.sqlite",
     "reads the audit store that the serve command writes, which is not run"},
    {"build/foreshore keys",
     "needs a Redis the config's state: section names; replicas_test makes keys the same way"},
    {"build/foreshore ", nullptr},
};

// A fresh clone as the README assumes it: the checkout with build/foreshore
// in it, ../shared/data beside it, and nothing set in the environment.
TEST(ReadmeCommands, DocumentedSubsetRunsAsWritten) {
  TempDir root;
  const fs::path repo = fs::path(root.path()) / "repo";
  fs::create_directories(repo / "build");
  fs::create_directories(fs::path(root.path()) / "shared");
  std::string why;
  ASSERT_TRUE(place_command(repo / "build" / "foreshore", foreshore_binary(), why)) << why;
  for (const char* folder : {"examples", "data", "docs"}) {
    fs::create_directory_symlink(fs::path(FSH_SOURCE_DIR) / folder, repo / folder);
  }
  fs::create_directory_symlink(FSH_SHARED_DATA_DIR, fs::path(root.path()) / "shared" / "data");

  const std::vector<std::string> commands = doc_commands(fs::path(FSH_SOURCE_DIR) / "README.md");
  ASSERT_GE(commands.size(), 20u) << "the README's ```sh blocks were not found";
  int ran = 0;
  for (const std::string& command : commands) {
    const ReadmeRule* rule = nullptr;
    for (const ReadmeRule& r : kReadmeRules) {
      if (command.starts_with(r.prefix)) {
        rule = &r;
        break;
      }
    }
    if (rule == nullptr) {
      ADD_FAILURE() << "README command with no rule in kReadmeRules: " << command;
      continue;
    }
    if (rule->skip_reason != nullptr) continue;
    // In README order: later commands read what earlier ones wrote.
    auto p = Process::start({"bash", "-c", command},
                            {"FORESHORE_MODEL_PATH=", "FORESHORE_DATA_DIR="}, repo.string());
    ASSERT_TRUE(p);
    EXPECT_EQ(p->wait(time_limit(std::chrono::seconds(600))), 0)
        << command << "\n"
        << p->stderr_text().substr(0, 2000);
    ++ran;
  }
  EXPECT_GE(ran, 15);
}

// Which commands of docs/*.md the test runs, as kReadmeRules does for the
// README. The docs call the installed binary `foreshore`: the built one is
// first on PATH. Shell variables (M=...) are set as the docs set them.
constexpr ReadmeRule kDocsRules[] = {
    {"sudo ", "installs system-wide as root; Packaging.SystemdUnitVerifies checks the unit"},
    {"echo 'OPENAI_API_KEY", "writes a root-owned secrets file (part of the install above)"},
    {"systemctl ", "drives a systemd service, which a test machine does not run"},
    {"scripts/", "installs packages and builds: what CI runs"},
    {"cmake -S . -B build-rel", "builds a second tree for the reliability suite, which CI runs"},
    {"ninja -C build-rel", "builds a second tree for the reliability suite, which CI runs"},
    {"cmake --install", "installs into a prefix: embed_install does, into a temporary one"},
    {"cd build-rel", "runs the reliability suite from that tree; CI runs the suite itself"},
    {"FORESHORE_BINARY=", "runs the reliability suite from that tree; CI runs the suite itself"},
    {"build/foreshore bench", "measures speed: nothing to pass or fail"},
    {"export PKG_CONFIG_PATH", "links an app against the installed library: embed_install does"},
    {"cc app.c", "links an app against the installed library: embed_install does"},
    {"foreshore keys",
     "needs a Redis the config's state: section names; replicas_test makes and revokes keys the "
     "same way"},
    {"curl ", "calls a running gateway's admin API; replicas_test calls it the same way"},
    {"foreshore ", nullptr},
    {"build/foreshore ", nullptr},
};

bool is_assignment(const std::string& command) {
  const size_t eq = command.find('=');
  return eq != std::string::npos && eq > 0 &&
         command.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ_") == eq &&
         command.find(' ') == std::string::npos;
}

// Every docs/*.md command not excused above runs as written, file by file in
// one shell (later commands use what earlier ones wrote), in a fresh clone's
// layout. The docs are a copy: commands there regenerate figures in docs/.
TEST(DocsCommands, EveryDocumentedCommandRunsAsWritten) {
  TempDir root;
  const fs::path repo = fs::path(root.path()) / "repo";
  fs::create_directories(repo / "build");
  fs::create_directories(fs::path(root.path()) / "shared");
  std::string why;
  ASSERT_TRUE(place_command(repo / "build" / "foreshore", foreshore_binary(), why)) << why;
  for (const char* folder : {"examples", "data", "packaging"}) {
    fs::create_directory_symlink(fs::path(FSH_SOURCE_DIR) / folder, repo / folder);
  }
  fs::copy(fs::path(FSH_SOURCE_DIR) / "docs", repo / "docs", fs::copy_options::recursive);
  fs::create_directory_symlink(FSH_SHARED_DATA_DIR, fs::path(root.path()) / "shared" / "data");
  const char* inherited = std::getenv("PATH");
  const std::string path =
      (repo / "build").string() + ":" + (inherited != nullptr ? inherited : "/usr/bin:/bin");

  int ran = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(FSH_SOURCE_DIR) / "docs")) {
    if (entry.path().extension() != ".md") continue;
    std::string script = "set -ex\n";  // -x: the failing command is the last one shown
    for (const std::string& command : doc_commands(entry.path())) {
      if (is_assignment(command)) {
        script += command + "\n";
        continue;
      }
      const ReadmeRule* rule = nullptr;
      for (const ReadmeRule& r : kDocsRules) {
        if (command.starts_with(r.prefix)) {
          rule = &r;
          break;
        }
      }
      if (rule == nullptr) {
        ADD_FAILURE() << entry.path().filename()
                      << ": command with no rule in kDocsRules: " << command;
        continue;
      }
      if (rule->skip_reason != nullptr) continue;
      script += command + " >/dev/null\n";
      ++ran;
    }
    auto p = Process::start({"bash", "-c", script},
                            {"FORESHORE_MODEL_PATH=", "FORESHORE_DATA_DIR=", "PATH=" + path},
                            repo.string());
    ASSERT_TRUE(p);
    EXPECT_EQ(p->wait(time_limit(std::chrono::seconds(600))), 0)
        << entry.path().filename() << ":\n"
        << script << "\n"
        << p->stderr_text().substr(0, 3000);
  }
  EXPECT_GE(ran, 15);
}

// The systemd units in packaging/ (one gateway; one of several replicas,
// foreshore@PORT) pass systemd's own check.
TEST(Packaging, SystemdUnitVerifies) {
  if (std::system("command -v systemd-analyze >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "systemd-analyze is not installed";
  }
  for (const std::string name : {"foreshore.service", "foreshore@.service"}) {
    // The unit names the installed binary; point it at the built one.
    TempDir dir;
    std::ifstream in(fs::path(FSH_SOURCE_DIR) / "packaging" / name);
    ASSERT_TRUE(in) << name;
    std::string unit((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string installed = "/usr/local/bin/foreshore";
    ASSERT_NE(unit.find(installed), std::string::npos);
    unit.replace(unit.find(installed), installed.size(), foreshore_binary());
    // A template is checked as one of its instances.
    const std::string file = name == "foreshore@.service" ? "foreshore@8081.service" : name;
    const std::string path = dir.write(file, unit);
    auto p = Process::start({"systemd-analyze", "verify", path});
    ASSERT_TRUE(p);
    EXPECT_EQ(p->wait(time_limit(std::chrono::seconds(60))), 0)
        << p->stderr_text() << p->stdout_text();
    // Warnings about other units of the machine are not ours to judge.
    EXPECT_EQ(p->stderr_text().find(file), std::string::npos) << p->stderr_text();
  }
}

}  // namespace
}  // namespace foreshore::testing
