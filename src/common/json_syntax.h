// Where and why a text is not JSON, from nlohmann's own parser: for error
// messages that say what to fix, and for checking that a text is the start
// of a JSON document.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace foreshore {

struct JsonSyntaxError {
  size_t byte = 0;   // where the parser stopped: past the end when the text was cut short
  std::string what;  // "line 1, column 43: syntax error while parsing value - ..."
};

// nullopt when `text` is one JSON document. The message leaves out the
// parser's "last read" echo of the text (a client's data does not belong in
// an error log).
inline std::optional<JsonSyntaxError> json_syntax_error(std::string_view text) {
  using json = nlohmann::json;
  struct FirstError : nlohmann::json_sax<json> {
    std::optional<JsonSyntaxError> error;
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override { return true; }
    bool key(string_t&) override { return true; }
    bool end_object() override { return true; }
    bool start_array(std::size_t) override { return true; }
    bool end_array() override { return true; }
    bool parse_error(std::size_t byte, const std::string&,
                     const nlohmann::detail::exception& e) override {
      std::string what = e.what();
      const size_t at = what.find("parse error at ");
      if (at != std::string::npos) what = what.substr(at + 15);
      error = JsonSyntaxError{byte, what.substr(0, what.find("; last read"))};
      return false;
    }
  } sax;
  json::sax_parse(text.begin(), text.end(), &sax);
  return sax.error;
}

}  // namespace foreshore
