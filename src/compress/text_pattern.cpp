#define PCRE2_CODE_UNIT_WIDTH 8
#include "compress/text_pattern.h"

#include <pcre2.h>

namespace foreshore::compress {

void TextPattern::Free::operator()(pcre2_real_code_8* code) const {
  pcre2_code_free(code);
}

Result<TextPattern> TextPattern::compile(const std::string& pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof message);
    return make_error(ErrorKind::kInvalidArgument, "regex /" + pattern + "/ is invalid at offset " +
                                                       std::to_string(error_offset) + ": " +
                                                       reinterpret_cast<const char*>(message));
  }
  return TextPattern(code);
}

bool TextPattern::search(std::string_view text) const {
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
      pcre2_match_data_create_from_pattern(code_.get(), nullptr), &pcre2_match_data_free);
  return pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, 0,
                     match.get(), nullptr) >= 0;
}

}  // namespace foreshore::compress
