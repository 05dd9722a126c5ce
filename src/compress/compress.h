// Model compression evaluated on the user's own tasks: quantization with
// calibrated mixed precision, structured pruning, and the evaluation that says
// whether a compressed model is still fit. Callers outside src/compress include only this.
#pragma once

#include "compress/divergence.h"
#include "compress/evaluate.h"
#include "compress/layer_trace.h"
#include "compress/mixed_precision.h"
#include "compress/prune.h"
#include "compress/quantize.h"
#include "compress/text_pattern.h"
