// Internal to src/route's sensitivity detector: the built-in detectors
// (names, default classes) and the Hyperscan expressions that find their
// candidates, each with the validator that confirms it. sensitivity.h is the
// module's interface (builtin_detectors() lists these).
#pragma once

#include <hs/hs.h>

#include <array>
#include <cstdint>
#include <string>

#include "route/sensitivity.h"
#include "route/sensitivity_validators.h"

namespace foreshore::route::detection {

// ---------------------------------------------------------------------------
// Built-in detectors and the expressions that find their candidates.

enum Builtin : uint32_t {
  kEmail,
  kPhone,
  kCreditCard,
  kIban,
  kUsSsn,
  kUsItin,
  kUkNino,
  kEsDni,
  kItFiscalCode,
  kFrNir,
  kIpAddress,
  kMacAddress,
  kPrivateKey,
  kOpenAiKey,
  kAnthropicKey,
  kAwsAccessKey,
  kGithubToken,
  kSlackToken,
  kGoogleApiKey,
  kStripeKey,
  kJwt,
  kBearerToken,
  kBasicAuth,
  kUrlCredentials,
  kServiceToken,
  kGenericSecret,
  kBankAccount,
  kGovernmentId,
  kMedicalRecord,
  kDateOfBirth,
  kNationalId,
  kBuiltinCount,
};

inline constexpr DataClass kDev = DataClass::kDeviceOnly;
inline constexpr DataClass kLocal = DataClass::kPreferLocal;

inline constexpr std::array<BuiltinDetectorInfo, kBuiltinCount> kBuiltins = {{
    {"email", kLocal, "email addresses (ASCII local part and domain)"},
    {"phone", kLocal, "phone numbers: E.164, 00-prefixed, North American, European national forms"},
    {"credit_card", kDev, "payment card numbers, 12-19 digits, grouped or not, Luhn-checked"},
    {"iban", kDev, "IBANs of the registry's countries, length and mod-97 checked"},
    {"us_ssn", kDev, "US social security numbers (valid area, group and serial)"},
    {"us_itin", kDev, "US individual taxpayer identification numbers"},
    {"uk_nino", kDev, "UK national insurance numbers"},
    {"es_dni", kDev, "Spanish DNI and NIE, check letter verified"},
    {"it_fiscal_code", kDev, "Italian codice fiscale, check character verified"},
    {"fr_nir", kDev, "French social security numbers (NIR), key verified"},
    {"ip_address", kLocal, "IPv4 (octets 0-255) and IPv6 addresses"},
    {"mac_address", kLocal, "MAC addresses"},
    {"private_key", kDev, "PEM private key blocks"},
    {"openai_api_key", kDev, "OpenAI API keys (sk-, sk-proj-)"},
    {"anthropic_api_key", kDev, "Anthropic API keys (sk-ant-)"},
    {"aws_access_key", kDev, "AWS access key ids (AKIA, ASIA, ...)"},
    {"github_token", kDev, "GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_)"},
    {"slack_token", kDev, "Slack tokens (xox?-) and webhook URLs"},
    {"google_api_key", kDev, "Google API keys (AIza...)"},
    {"stripe_key", kDev, "Stripe secret and restricted keys"},
    {"jwt", kDev, "JSON web tokens"},
    {"bearer_token", kDev, "Bearer tokens (Authorization: Bearer ... or Token ...)"},
    {"basic_auth", kDev, "Authorization: Basic credentials"},
    {"url_credentials", kDev, "passwords in URLs (scheme://user:password@host)"},
    {"service_token", kDev,
     "GitLab, Hugging Face, npm, PyPI, SendGrid, DigitalOcean, Shopify, Google OAuth tokens, "
     "Slack app tokens, Stripe webhook secrets, age secret keys, PuTTY key files"},
    {"generic_secret", kDev,
     "high-entropy values of api_key=, secret=, token=, password= ..., passwords named in "
     "a sentence (\"the password for the wifi is ...\") or given on a command line (mysql -p, "
     "curl -u, --password), Docker registry auths, PINs and access codes after their name"},
    {"bank_account", kDev,
     "bank account numbers after their name (account number, acct #, sort code or BSB and "
     "account) and US routing numbers (ABA checksum verified)"},
    {"government_id", kDev,
     "passport and driver's licence numbers, US EIN and TIN after their name"},
    {"medical_record", kDev,
     "medical record numbers (MRN), patient, health insurance, Medicare and member ids after "
     "their name"},
    {"date_of_birth", kLocal, "dates of birth after DOB, date of birth, born on"},
    {"national_id", kDev,
     "national ids, check digits verified: Canadian SIN, Indian Aadhaar and PAN, Dutch BSN, "
     "Brazilian CPF, German Steuer-ID, Polish PESEL, Australian TFN, Singapore NRIC/FIN, Korean "
     "RRN, Finnish HETU"},
}};

// "email, phone, ...": for error messages about an unknown detector.
std::string known_detector_list();

struct BuiltinPattern {
  Builtin detector;
  Check check;
  const char* regex;
  unsigned flags;
  // Whether Hyperscan tracks where the match starts. Costly to compile for
  // broad expressions; those validators find the start themselves.
  bool som = true;
};

inline constexpr unsigned kCaseless = HS_FLAG_CASELESS;

// Nine or more number words in a row, separated by spaces, commas, dots or
// dashes: a card or an SSN read out ("four one one one, one one one one...").
// Reported once per text; the scanner then reads it with the words as digits.
inline constexpr const char* kNumberWordsRegex =
    R"(\b(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)(?:[\s,.\-]+(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)){8}\b)";

// Hyperscan has no look-around, so the expressions over-match at the edges
// (every end offset is reported with its leftmost start); the validators
// reject candidates that are part of a longer number or token.
inline constexpr BuiltinPattern kBuiltinPatterns[] = {
    // Only the '@' and its neighbours; the validator reads the address around it.
    {kEmail, Check::kEmail, R"([A-Za-z0-9._%+\-]@[A-Za-z0-9])", 0},
    {kPhone, Check::kPhone, R"(\d[\d ().\-]{4,28}\d(?:\s?(?:x|ext\.?|extension)\s?\d{1,6})?\b)",
     kCaseless, false},
    {kCreditCard, Check::kCard, R"(\b\d{12,19}\b)", 0},
    {kCreditCard, Check::kCardAfterWord,
     R"(\b(?:cc|card|visa|amex|mastercard|mc|pan|cardnumber|cardno)\d{13,19}\b)", kCaseless},
    {kCreditCard, Check::kCard,
     R"(\b\d{4}(?: \d{4} \d{4}(?: \d{1,4}(?: \d{1,3})?)?| \d{6} \d{4,5})\b)", 0},
    {kCreditCard, Check::kCard,
     R"(\b\d{4}(?:-\d{4}-\d{4}(?:-\d{1,4}(?:-\d{1,3})?)?|-\d{6}-\d{4,5})\b)", 0},
    {kCreditCard, Check::kCard,
     R"(\b\d{4}(?:\.\d{4}\.\d{4}(?:\.\d{1,4}(?:\.\d{1,3})?)?|\.\d{6}\.\d{4,5})\b)", 0},
    // Country, check digits and the first group; the country's length decides the rest.
    {kIban, Check::kIban, R"(\b[A-Z]{2} ?\d{2}[ \-.]?[A-Z0-9]{4})", kCaseless},
    // Also finds ITINs (area 9xx); the validator tells them apart.
    {kUsSsn, Check::kSsn,
     R"(\b(?:\d{3}-\d{2}-\d{4}|\d{3}\.\d{2}\.\d{4}|\d{3} \d{2} \d{4}|\d{9})\b)", 0},
    {kUkNino, Check::kNino,
     R"(\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b)", kCaseless},
    {kEsDni, Check::kDni, R"(\b(?:\d{8}|[XYZ]-?\d{7})-?[A-Z]\b)", kCaseless},
    // Upper case only: case-insensitive, six letters match most English words.
    {kItFiscalCode, Check::kFiscalCode,
     R"(\b[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]\b)",
     0},
    {kFrNir, Check::kNir, R"(\b[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b)",
     kCaseless},
    {kIpAddress, Check::kIpv4, R"(\b(?:\d{1,3}\.){3}\d{1,3}\b)", 0},
    // Two colons close together; the validator reads the address around them.
    {kIpAddress, Check::kIpv6, R"(:[0-9A-Fa-f]{0,4}:)", 0, false},
    {kMacAddress, Check::kMac, R"(\b[0-9A-F]{2}(?:[:\-][0-9A-F]{2}){5}\b)", kCaseless},
    {kPrivateKey, Check::kPrivateKey,
     R"(-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----)", 0},
    {kPrivateKey, Check::kAccept, R"(---- BEGIN SSH2 (?:ENCRYPTED )?PRIVATE KEY ----)", 0},
    {kOpenAiKey, Check::kOpenAi, R"(\bsk-[A-Za-z0-9_\-]{20,})", 0},
    {kAnthropicKey, Check::kTokenWithDigit, R"(\bsk-ant-[A-Za-z0-9_\-]{20,})", 0},
    {kAwsAccessKey, Check::kAccept, R"(\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b)", 0},
    {kGithubToken, Check::kAccept, R"(\bgh[pousr]_[A-Za-z0-9]{36}\b)", 0},
    {kGithubToken, Check::kAccept, R"(\bgithub_pat_[A-Za-z0-9_]{82}\b)", 0},
    {kSlackToken, Check::kTokenWithDigit, R"(\bxox[abposr]-[A-Za-z0-9\-]{10,})", 0},
    {kSlackToken, Check::kTokenWithDigit,
     R"(https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,})", 0},
    {kGoogleApiKey, Check::kTokenExact, R"(\bAIza[0-9A-Za-z_\-]{35})", 0},
    {kStripeKey, Check::kTokenWithDigit, R"(\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,})", 0},
    {kJwt, Check::kJwt, R"(\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]*)", 0},
    {kBearerToken, Check::kBearer, R"(\bbearer\s+[A-Za-z0-9._~+/\-]{16,}=*)", kCaseless},
    // The "Token" scheme (Django REST framework, GitHub): the validator's
    // digit check reads the token as it reads a bearer one.
    {kBearerToken, Check::kBearer,
     R"(\bauthorization["']?\s*:\s*["']?token\s+[A-Za-z0-9._~+/\-]{16,}=*)", kCaseless},
    // As a header line or a quoted dictionary entry ({"Authorization": "Basic ..."}).
    {kBasicAuth, Check::kBasic, R"(\bauthorization["']?\s*:\s*["']?basic\s+[A-Za-z0-9+/]{8,}=*)",
     kCaseless},
    {kUrlCredentials, Check::kUrlCredentials, R"(://[^\s:/@]*:[^\s/@]+@)", 0, false},
    // Prefixes each service puts on its tokens, with their lengths.
    {kServiceToken, Check::kAccept, R"(\bglpat-[A-Za-z0-9_\-]{20}\b)", 0},
    {kServiceToken, Check::kAccept, R"(\bhf_[A-Za-z]{34}\b)", 0},
    {kServiceToken, Check::kTokenWithDigit, R"(\bnpm_[A-Za-z0-9]{36}\b)", 0},
    {kServiceToken, Check::kAccept, R"(\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,})", 0},
    {kServiceToken, Check::kAccept, R"(\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b)", 0},
    {kServiceToken, Check::kTokenWithDigit, R"(\bxapp-\d-[A-Z0-9]{8,}-\d{6,}-[a-f0-9]{32,})", 0},
    {kServiceToken, Check::kTokenWithDigit, R"(\bwhsec_[A-Za-z0-9+/]{24,})", 0},
    {kServiceToken, Check::kAccept, R"(\bdop_v1_[a-f0-9]{64}\b)", 0},
    {kServiceToken, Check::kAccept, R"(\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}\b)", 0},
    {kServiceToken, Check::kTokenWithDigit, R"(\bya29\.[0-9A-Za-z_\-]{30,})", 0},
    {kServiceToken, Check::kTokenWithDigit, R"((?:^|[^0-9A-Za-z/])1//0[0-9A-Za-z_\-]{30,})", 0},
    {kServiceToken, Check::kAccept, R"(\bAGE-SECRET-KEY-1[0-9A-Z]{58}\b)", 0},
    {kServiceToken, Check::kAccept, R"(PuTTY-User-Key-File-\d+:)", 0},
    // The last word of the key's name, the separator and the value's first
    // character; the validator reads the whole name and value. (Spelling out
    // every key name here makes the whole scan several times slower.)
    // A password named in a sentence, its value after "is" a few words on
    // ("the password for the wifi is ..."); the validator reads the value.
    // In English, German, Spanish, Portuguese, French, Dutch, Italian,
    // Polish, Swedish and Russian ("mi contraseña es ...", "Mein Passwort
    // lautet ...").
    {kGenericSecret, Check::kPasswordPhrase,
     R"((?:\b(?:password|passcode|passphrase|passwort|kennwort|contrase(?:\xc3\xb1|n)a|senha|wachtwoord|mot[ \t]+de[ \t]+passe|has(?:\xc5\x82|l)o|l(?:\xc3\xb6|o)senord|parola)\b|\xd0\xbf\xd0\xb0\xd1\x80\xd0\xbe\xd0\xbb\xd1\x8c)(?:[^\n.:=<>]{0,40}[ \t](?:is|was|ist|lautet|war|es|est|era|\xc3\xa9|\xc3\xa8|jest|\xc3\xa4r|\xd1\x8d\xd1\x82\xd0\xbe)[ \t]*[:=]?|[^\n.:=<>]{1,40}[:=])[ \t]*["']?[^\s"'])",
     kCaseless, false},
    // Command lines. An option that takes a password ("--password VALUE");
    // one whose command says it is one (mysql -pVALUE, sshpass -p VALUE,
    // docker login -p VALUE, curl -u user:VALUE); a login and its password
    // (.netrc's "login bob password ...", "username bob password ...");
    // a key named with a blank before its value ("--api-key 9f8e...",
    // "api key 9f8e...").
    {kGenericSecret, Check::kPasswordPhrase,
     R"((?:^|[ \t])--?(?:password|passwd|pass|pwd|passphrase)[ \t]+["']?[^\s"'\-])", kCaseless,
     false},
    {kGenericSecret, Check::kCommandPassword,
     R"(\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlshow|mariadb|mariadb-dump)\b[^\n]{0,200}[ \t]-p["']?[^\s"'])",
     0, false},
    {kGenericSecret, Check::kCommandPassword,
     R"(\b(?:sshpass|(?:docker|podman|nerdctl|buildah|skopeo|oras|registry)[ \t]+login)\b[^\n]{0,200}[ \t]-p[ \t]*["']?[^\s"'\-])",
     0, false},
    {kGenericSecret, Check::kCommandPassword,
     R"(\bcurl\b[^\n]{0,300}[ \t](?:-u[ \t]*|--user[ \t=]+)["']?[^\s:"'@]*:[^\s"'@])", 0, false},
    {kGenericSecret, Check::kPasswordPhrase,
     R"(\b(?:login|user(?:name)?)\b[ \t]*[:=]?[ \t]*["']?[^\s"']{1,64}["']?[ \t,;/|]*\s+(?:password|passwd|pwd|pass)[ \t]+["']?[^\s"'\-])",
     kCaseless, false},
    {kGenericSecret, Check::kNamedKey,
     R"(\b(?:api|secret|access|auth|private|client|app)[ \t_\-]?(?:key|token|secret)(?:[ \t]+(?:is|was))?[ \t]+["']?[A-Za-z0-9])",
     kCaseless, false},
    // A registry credential in a Docker or Podman config: base64 of user:password.
    {kGenericSecret, Check::kDockerAuth, R"("auth"[ \t]*:[ \t]*"[A-Za-z0-9+/])", 0, false},
    // A PIN or a code that opens something, after its name ("PIN code 4821",
    // "the alarm code is 4821", "verification code: 482193").
    {kGenericSecret, Check::kNamedValue,
     R"(\b(?:pin[ \t]+(?:code|number|no\.?)|(?:security|access|alarm|door|gate|garage|safe|unlock|verification|one[ \t\-]time)[ \t]+(?:code|pin|passcode)|otp)[ \t]*(?:[:#=]|is|was)?[ \t]*\d{4,8}\b)",
     kCaseless, false},
    // The rest of this file's detectors need the name before the number:
    // "account number is 12345678", "MRN: A1234567". A bare number of that
    // shape is too common to be read as one. No start of match: tracking it
    // through the bounded repeats made the whole scan 2.5 times slower; the
    // validators find the value back from the end.
    {kBankAccount, Check::kAbaRouting,
     R"(\b(?:routing|aba|rtn)(?:[ \t]+(?:transit[ \t]+)?(?:number|no\.?|num|#))?[ \t]*(?:[:#=]|is)?[ \t]*\d{9}\b)",
     kCaseless, false},
    {kBankAccount, Check::kNamedValue,
     R"(\b(?:account|acct|a/c)[ \t]*(?:number|no\.?|num|#)[ \t]*(?:[:#=]|is)?[ \t]*\d{6,17}\b)",
     kCaseless, false},
    {kBankAccount, Check::kNamedValue, R"(\bbank[ \t]+account[ \t]*(?:[:#=]|is)?[ \t]*\d{6,17}\b)",
     kCaseless, false},
    // A UK sort code or an Australian BSB, then the account ("sort code
    // 20-00-00 account 55779911").
    {kBankAccount, Check::kNamedValue,
     R"(\b(?:sort[ \t]+code|bsb)[^\n]{0,30}\baccount(?:[ \t]+(?:number|no\.?|num|#))?[ \t]*(?:[:#=]|is)?[ \t]*\d{6,17}\b)",
     kCaseless, false},
    {kGovernmentId, Check::kNamedValue,
     R"(\b(?:passport|driver'?s?[ \t]+licen[cs]e|driving[ \t]+licen[cs]e)(?:[ \t]+(?:number|no\.?|num|#|id))?[ \t]*(?:[:#=]|is)?[ \t]*[A-Z0-9][A-Z0-9\-]{4,19}\b)",
     kCaseless, false},
    // A US employer or taxpayer id (EIN, TIN): nine digits, 2-7.
    {kGovernmentId, Check::kNamedValue,
     R"(\b(?:f?ein|tin|tax[ \t]*id(?:entification)?|taxpayer[ \t]+id(?:entification)?|employer[ \t]+identification)(?:[ \t]+(?:number|no\.?|num|#))?[ \t]*(?:[:#=]|is)?[ \t]*\d{2}-?\d{7}\b)",
     kCaseless, false},
    {kMedicalRecord, Check::kNamedValue,
     R"(\b(?:mrn|medical[ \t]+record|patient[ \t]+id|health[ \t]+insurance|insurance[ \t]+member|member[ \t]+id|medicare|medicaid|nhs)(?:[ \t]+(?:number|no\.?|num|#|id))?[ \t]*(?:[:#=]|is)?[ \t]*[A-Z0-9][A-Z0-9\-]{4,19}\b)",
     kCaseless, false},
    // The UK NHS number after its name, grouped 3-3-4 or not (mod 11).
    {kMedicalRecord, Check::kNhsNumber,
     R"(\bnhs(?:[ \t]+(?:number|no\.?|num|#))?[ \t]*(?:[:#=]|is)?[ \t]*\d{3}[ \-]?\d{3}[ \-]?\d{4}\b)",
     kCaseless, false},
    // National ids after their name; each validator checks the id's own
    // check digits.
    {kNationalId, Check::kCanadaSin,
     R"(\b(?:sin|social[ \t]+insurance|nas|num(?:\xc3\xa9|e)ro[ \t]+d'assurance[ \t]+sociale)(?:[ \t]+(?:number|no\.?|num|#))?[ \t]*(?:[:#=]|is)?[ \t]*\d{3}[ \-]?\d{3}[ \-]?\d{3}\b)",
     kCaseless, false},
    {kNationalId, Check::kAadhaar,
     R"(\b(?:aadhaa?r|uidai|uid)(?:[ \t]+(?:card|number|no\.?|num|#))?[ \t]*(?:[:#=]|is)?[ \t]*[2-9]\d{3}[ \-]?\d{4}[ \-]?\d{4}\b)",
     kCaseless, false},
    {kNationalId, Check::kDutchBsn,
     R"(\b(?:bsn|burgerservicenummer|sofi(?:nummer)?)(?:[ \t]+(?:number|nummer|no\.?|nr\.?|#))?[ \t]*(?:[:#=]|is)?[ \t]*\d(?:[ .\-]?\d){8}\b)",
     kCaseless, false},
    {kNationalId, Check::kBrazilCpf, R"(\b\d{3}\.\d{3}\.\d{3}-\d{2}\b)", 0, false},
    // Singapore NRIC/FIN, Korean RRN, Finnish HETU and Indian PAN after their
    // name: their shapes alone, scanned for everywhere, nearly doubled the
    // scan of a 4 KiB prompt (docs/PERFORMANCE.md).
    {kNationalId, Check::kSingaporeNric,
     R"(\b(?:nric|fin|ic)(?:[ \t]+(?:number|no\.?|#))?[ \t]*(?:[:#=]|is)?[ \t]*[STFG]\d{7}[A-Z]\b)",
     kCaseless, false},
    {kNationalId, Check::kKoreaRrn,
     R"(\b(?:rrn|resident[ \t]+registration(?:[ \t]+(?:number|no\.?))?|\xec\xa3\xbc\xeb\xaf\xbc\xeb\x93\xb1\xeb\xa1\x9d\xeb\xb2\x88\xed\x98\xb8)[ \t]*(?:[:#=]|is)?[ \t]*\d{2}[01]\d[0-3]\d-[1-8]\d{6}\b)",
     kCaseless, false},
    {kNationalId, Check::kFinlandHetu,
     R"(\b(?:hetu|henkil(?:\xc3\xb6|o)tunnus|personal[ \t]+identity[ \t]+code)[ \t]*(?:[:#=]|is|on)?[ \t]*[0-3]\d[01]\d{3}[\-+A-FU-Y]\d{3}[0-9A-Y]\b)",
     kCaseless, false},
    {kNationalId, Check::kIndiaPan,
     R"(\bpan(?:[ \t]+(?:card|number|no\.?|#))?[ \t]*(?:[:#=]|is)?[ \t]*[A-Z]{3}[PCHFATBLJG][A-Z]\d{4}[A-Z]\b)",
     kCaseless, false},
    {kNationalId, Check::kBrazilCpf, R"(\bcpf[ \t]*(?:[:#=]|is|(?:\xc3\xa9|e))?[ \t]*\d{11}\b)",
     kCaseless, false},
    {kNationalId, Check::kGermanTaxId,
     R"(\b(?:steuer[ \-]?id|steuer(?:liche)?[ \t]*identifikationsnummer|steuernummer|idnr\.?)(?:[ \t]+(?:ist|lautet))?[ \t]*[:#=]?[ \t]*\d{2}[ ]?\d{3}[ ]?\d{3}[ ]?\d{3}\b)",
     kCaseless, false},
    {kNationalId, Check::kPesel,
     R"(\bpesel(?:[ \t]+(?:to|is|number|nr\.?))?[ \t]*[:#=]?[ \t]*\d{11}\b)", kCaseless, false},
    {kNationalId, Check::kAustraliaTfn,
     R"(\b(?:tfn|tax[ \t]+file[ \t]+(?:number|no\.?|#))(?:[ \t]+is)?[ \t]*[:#=]?[ \t]*\d{3}[ \-]?\d{3}[ \-]?\d{3}\b)",
     kCaseless, false},
    {kDateOfBirth, Check::kNamedDate,
     R"(\b(?:dob|d\.o\.b\.?|date[ \t]+of[ \t]+birth|birth[ \t]?date|born[ \t]+on)[ \t]*(?:[:=]|is)?[ \t]*(?:\d{1,4}[/\-.]\d{1,2}[/\-.]\d{1,4}|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?[ \t]+\d{1,2}(?:st|nd|rd|th)?,?[ \t]+\d{4}|\d{1,2}(?:st|nd|rd|th)?[ \t]+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?,?[ \t]+\d{4}))",
     kCaseless, false},
    {kGenericSecret, Check::kGenericSecret,
     R"((?:key|id|secret|token|password|passwd|pwd|passphrase|pass|passe|pw|pin|passwort|kennwort|contrase(?:\xc3\xb1|n)a|senha|wachtwoord|has(?:\xc5\x82|l)o|l(?:\xc3\xb6|o)senord|parola|(?:\xd0\xbf|\xd0\x9f)\xd0\xb0\xd1\x80\xd0\xbe\xd0\xbb\xd1\x8c|\xd0\x9f\xd0\x90\xd0\xa0\xd0\x9e\xd0\x9b\xd0\xac|\xe5\xaf\x86\xe7(?:\xa0\x81|\xa2\xbc)|\xe3\x83\xaf\xe3\x83\xbc\xe3\x83\x89|\xeb\xb2\x88\xed\x98\xb8)["']?[ \t]*(?:[:=>]|=>|[ \t]+is|[ \t]-)[ \t]*["']?[A-Za-z0-9_\-+/=.~!@#$%^&*])",
     kCaseless, false},
};

}  // namespace foreshore::route::detection
