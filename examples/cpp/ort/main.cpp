// Classify images with a porter ONNX export on ONNX Runtime's C API (C++17, no other library).
//
//   porter_ort MODEL.onnx IMAGE.ppm [IMAGE.ppm ...] [--logits]
//
// Everything about the model comes from its metadata (docs/metadata.md, schema 1): input and
// output names, classes, resize/crop, scale, mean and std. Images are binary PPM (P6, 8-bit
// RGB): decoding JPEG/PNG would need a third-party library, and any tool writes PPM (Pillow:
// `Image.open(p).convert("RGB").save("x.ppm")`). Preprocessing follows docs/metadata.md step by
// step, including the resize: Pillow's BILINEAR filter (antialiased when shrinking), computed
// with the same fixed-point arithmetic and pass order as Pillow, so the pixels are Pillow's bit
// for bit and the logits match `port.load(...).predict` for images of any size.
//
// Output: per image, its path and the top-5 classes with probabilities (softmax of the logits);
// with --logits also one line `logits PATH v0 v1 ...` (what the tests compare with Python).

#include <onnxruntime_c_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

const OrtApi* g_ort = nullptr;

// Turn an OrtStatus into an exception carrying ONNX Runtime's message (nullptr = success).
void check(OrtStatus* status, const char* what) {
  if (status == nullptr) return;
  std::string message = std::string(what) + ": " + g_ort->GetErrorMessage(status);
  g_ort->ReleaseStatus(status);
  throw std::runtime_error(message);
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, sep)) out.push_back(item);
  return out;
}

// The preprocessing and I/O names an app needs, read from the flat `porter.*` keys.
struct Card {
  std::string input_name, output_name, layout, color_order, dtype;
  std::vector<std::string> classes;
  int resize = 0, crop = 0;
  float scale = 0.f;
  std::vector<float> mean, std_dev;
};

Card read_card(OrtSession* session) {
  OrtModelMetadata* meta = nullptr;
  check(g_ort->SessionGetModelMetadata(session, &meta), "reading the model metadata");
  OrtAllocator* allocator = nullptr;
  check(g_ort->GetAllocatorWithDefaultOptions(&allocator), "getting the default allocator");
  auto lookup = [&](const char* key) {
    char* value = nullptr;
    check(g_ort->ModelMetadataLookupCustomMetadataMap(meta, allocator, key, &value), key);
    if (value == nullptr) {
      throw std::runtime_error(std::string("the model has no '") + key +
                               "' metadata: export it with porter (docs/metadata.md)");
    }
    std::string text(value);
    check(g_ort->AllocatorFree(allocator, value), "freeing metadata");
    return text;
  };
  Card card;
  if (std::stoi(lookup("porter.schema")) > 1) {
    g_ort->ReleaseModelMetadata(meta);
    throw std::runtime_error("the model's metadata schema is newer than 1: update this app");
  }
  card.input_name = lookup("porter.input_name");
  card.output_name = lookup("porter.output_name");
  card.layout = lookup("porter.layout");
  card.color_order = lookup("porter.color_order");
  card.dtype = lookup("porter.input_dtype");
  card.classes = split(lookup("porter.classes"), '\n');
  card.resize = std::stoi(lookup("porter.resize"));
  card.crop = std::stoi(lookup("porter.crop"));
  // strtod reads back the shortest decimal porter writes; float is what torchvision computes in.
  card.scale = static_cast<float>(std::strtod(lookup("porter.scale").c_str(), nullptr));
  for (const auto& v : split(lookup("porter.mean"), ','))
    card.mean.push_back(static_cast<float>(std::strtod(v.c_str(), nullptr)));
  for (const auto& v : split(lookup("porter.std"), ','))
    card.std_dev.push_back(static_cast<float>(std::strtod(v.c_str(), nullptr)));
  g_ort->ReleaseModelMetadata(meta);
  if (card.layout != "NCHW" || card.color_order != "RGB" || card.dtype != "float32" ||
      card.mean.size() != 3 || card.std_dev.size() != 3) {
    throw std::runtime_error("this app feeds float32 NCHW RGB inputs; the model wants " +
                             card.dtype + " " + card.layout + " " + card.color_order);
  }
  return card;
}

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // HWC
};

// Binary PPM (P6, maxval 255); '#' comments in the header are skipped.
Image read_ppm(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open " + path);
  auto token = [&]() {
    std::string t;
    while (file >> t && t[0] == '#') std::getline(file, t);
    return t;
  };
  Image img;
  int maxval = 0;
  try {
    if (token() != "P6") throw std::runtime_error("");
    img.width = std::stoi(token());
    img.height = std::stoi(token());
    maxval = std::stoi(token());
  } catch (const std::exception&) {
    throw std::runtime_error(path + " is not a binary PPM (P6) image");
  }
  if (maxval != 255 || img.width <= 0 || img.height <= 0)
    throw std::runtime_error(path + ": only 8-bit PPM images of positive size are supported");
  file.get();  // the single whitespace after maxval
  img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
  file.read(reinterpret_cast<char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
  if (file.gcount() != static_cast<std::streamsize>(img.rgb.size()))
    throw std::runtime_error(path + " is truncated");
  return img;
}

// -- the resize: Pillow's BILINEAR resample, reproduced bit for bit ------------------------------
// Pillow resizes in two separable passes (one per axis). Each output pixel is a weighted sum of
// input pixels under a triangle filter whose support is widened by the scale factor when the
// axis shrinks (that is the antialiasing). The weights are normalised to sum to 1, converted to
// fixed point with 22 fractional bits, and each pass rounds and clips to uint8, so the order of
// the passes matters: see resize_like_pillow.
constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS: 8-bit values, 2 spare

struct AxisWeights {
  std::vector<int> first;                 // first input index of each output index
  std::vector<std::vector<int32_t>> taps;  // fixed-point weights from `first` on
};

// The weights of one axis, in Pillow's arithmetic: double precision, the filter evaluated at
// (input centre - output centre) / filter scale, normalised by their sequential sum, then
// rounded half away from zero to fixed point.
AxisWeights axis_weights(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);  // widen only when shrinking
  const double support = 1.0 * filter_scale;          // the triangle's support is 1
  const double inverse = 1.0 / filter_scale;          // Pillow multiplies by the inverse
  AxisWeights w;
  for (int o = 0; o < out_size; ++o) {
    const double centre = (o + 0.5) * scale;
    // (int) truncates toward zero, as in C; the bounds are then clamped to the image.
    int lo = std::max(static_cast<int>(centre - support + 0.5), 0);
    int hi = std::min(static_cast<int>(centre + support + 0.5), in_size);
    std::vector<double> k(static_cast<size_t>(std::max(hi - lo, 0)));
    double sum = 0.0;
    for (size_t i = 0; i < k.size(); ++i) {
      double t = std::fabs((static_cast<double>(i) + lo - centre + 0.5) * inverse);
      k[i] = t < 1.0 ? 1.0 - t : 0.0;
      sum += k[i];
    }
    std::vector<int32_t> taps(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
      double v = sum != 0.0 ? k[i] / sum : k[i];
      double fixed = v * (1 << kPrecisionBits);
      taps[i] = static_cast<int32_t>(v < 0 ? fixed - 0.5 : fixed + 0.5);
    }
    w.first.push_back(lo);
    w.taps.push_back(std::move(taps));
  }
  return w;
}

// One pass along x (horizontal = true) or y: width x height x 3 in, the resized axis out.
Image resample_axis(const Image& in, int out_size, bool horizontal) {
  Image out;
  out.width = horizontal ? out_size : in.width;
  out.height = horizontal ? in.height : out_size;
  out.rgb.resize(static_cast<size_t>(out.width) * out.height * 3);
  const AxisWeights w = axis_weights(horizontal ? in.width : in.height, out_size);
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      const int o = horizontal ? x : y;
      const auto& taps = w.taps[o];
      for (int c = 0; c < 3; ++c) {
        int32_t acc = 1 << (kPrecisionBits - 1);  // + 0.5: round to nearest on the shift
        for (size_t i = 0; i < taps.size(); ++i) {
          const int sx = horizontal ? w.first[o] + static_cast<int>(i) : x;
          const int sy = horizontal ? y : w.first[o] + static_cast<int>(i);
          acc += in.rgb[(static_cast<size_t>(sy) * in.width + sx) * 3 + c] * taps[i];
        }
        const int32_t v = acc < 0 ? 0 : std::min<int32_t>(acc >> kPrecisionBits, 255);
        out.rgb[(static_cast<size_t>(y) * out.width + x) * 3 + c] = static_cast<uint8_t>(v);
      }
    }
  }
  return out;
}

// Pillow's Image.resize(size, BILINEAR) of an RGB image. Pillow (13.0) runs the horizontal pass
// first unless the height shrinks by more than twice the pixels the width loses, i.e.
// (in_h - out_h) > 2 * (in_w - out_w) with out_h < in_h: then vertical first. The two orders
// round differently, so following Pillow's choice is what makes the pixels identical.
Image resize_like_pillow(const Image& img, int width, int height) {
  const bool need_h = width != img.width, need_v = height != img.height;
  const bool vertical_first =
      height < img.height && (img.height - height) > 2 * (img.width - width);
  Image out = img;
  if (vertical_first) {
    if (need_v) out = resample_axis(out, height, false);
    if (need_h) out = resample_axis(out, width, true);
  } else {
    if (need_h) out = resample_axis(out, width, true);
    if (need_v) out = resample_axis(out, height, false);
  }
  return out;
}

// (width, height) with the shorter side resized to `resize` and the longer one to
// int(resize * long / short), torchvision's Resize(int) rule (the exact integer product, one
// correctly rounded division, truncated: the same as Python's).
std::pair<int, int> resized_size(int width, int height, int resize) {
  const int shorter = std::min(width, height), longer = std::max(width, height);
  const int other = static_cast<int>(static_cast<double>(static_cast<int64_t>(resize) * longer) /
                                     shorter);
  return width <= height ? std::make_pair(resize, other) : std::make_pair(other, resize);
}

// Python's round() of a half-integer: half to even (torchvision's centre-crop offset).
int round_half_even(double x) { return static_cast<int>(std::nearbyint(x)); }

// docs/metadata.md steps 2-4: resize, centre crop with zero padding, scale, normalise.
std::vector<float> preprocess(const Image& original, const Card& card) {
  const auto [width_r, height_r] = resized_size(original.width, original.height, card.resize);
  // An image already at that size is used as it is (Pillow is not called then either).
  const Image img = (width_r == original.width && height_r == original.height)
                        ? original
                        : resize_like_pillow(original, width_r, height_r);
  const int crop = card.crop;
  // Zero padding when the image is smaller than the crop: the smaller half on the left/top.
  int pad_w = std::max(crop - img.width, 0), pad_h = std::max(crop - img.height, 0);
  int width = img.width + pad_w, height = img.height + pad_h;
  int top = round_half_even((height - crop) / 2.0), left = round_half_even((width - crop) / 2.0);
  std::vector<float> chw(static_cast<size_t>(3) * crop * crop);
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < crop; ++y) {
      for (int x = 0; x < crop; ++x) {
        int src_y = y + top - pad_h / 2, src_x = x + left - pad_w / 2;
        uint8_t pixel = 0;
        if (src_y >= 0 && src_y < img.height && src_x >= 0 && src_x < img.width)
          pixel = img.rgb[(static_cast<size_t>(src_y) * img.width + src_x) * 3 + c];
        // The same float32 operations in the same order as torchvision: x / 255, - mean, / std
        // (porter.scale is 1/255; dividing by 255 is what gives identical bits).
        float value = static_cast<float>(pixel) / 255.0f;
        if (std::fabs(card.scale * 255.0f - 1.0f) > 1e-6f) value = pixel * card.scale;
        chw[(static_cast<size_t>(c) * crop + y) * crop + x] = (value - card.mean[c]) / card.std_dev[c];
      }
    }
  }
  return chw;
}

std::vector<float> run(OrtSession* session, OrtMemoryInfo* memory, const Card& card,
                       std::vector<float>& input) {
  const int64_t shape[4] = {1, 3, card.crop, card.crop};
  OrtValue* tensor = nullptr;
  check(g_ort->CreateTensorWithDataAsOrtValue(memory, input.data(), input.size() * sizeof(float),
                                              shape, 4, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                              &tensor),
        "creating the input tensor");
  const char* input_names[] = {card.input_name.c_str()};
  const char* output_names[] = {card.output_name.c_str()};
  OrtValue* output = nullptr;
  OrtStatus* status = g_ort->Run(session, nullptr, input_names, &tensor, 1, output_names, 1,
                                 &output);
  g_ort->ReleaseValue(tensor);
  check(status, "running the model");
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(g_ort->GetTensorTypeAndShape(output, &info), "reading the output shape");
  size_t count = 0;
  check(g_ort->GetTensorShapeElementCount(info, &count), "reading the output size");
  g_ort->ReleaseTensorTypeAndShapeInfo(info);
  float* data = nullptr;
  check(g_ort->GetTensorMutableData(output, reinterpret_cast<void**>(&data)), "reading logits");
  std::vector<float> logits(data, data + count);
  g_ort->ReleaseValue(output);
  return logits;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> images;
  bool print_logits = false;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--logits") print_logits = true; else images.push_back(arg);
  }
  if (argc < 3 || images.empty()) {
    std::fprintf(stderr, "usage: %s MODEL.onnx IMAGE.ppm [IMAGE.ppm ...] [--logits]\n", argv[0]);
    return 2;
  }
  g_ort = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (g_ort == nullptr) {
    std::fprintf(stderr, "porter_ort: the ONNX Runtime library is older than API %d\n",
                 ORT_API_VERSION);
    return 2;
  }
  OrtEnv* env = nullptr;
  OrtSessionOptions* options = nullptr;
  OrtSession* session = nullptr;
  OrtMemoryInfo* memory = nullptr;
  int code = 0;
  try {
    check(g_ort->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "porter_ort", &env), "creating the env");
    check(g_ort->CreateSessionOptions(&options), "creating session options");
    check(g_ort->CreateSession(env, argv[1], options, &session), argv[1]);
    check(g_ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory),
          "creating CPU memory info");
    Card card = read_card(session);
    for (const auto& path : images) {
      std::vector<float> input = preprocess(read_ppm(path), card);
      std::vector<float> logits = run(session, memory, card, input);
      if (logits.size() != card.classes.size())
        throw std::runtime_error("the model gave " + std::to_string(logits.size()) +
                                 " logits for " + std::to_string(card.classes.size()) + " classes");
      // Softmax in double, shifted by the max logit so exp never overflows.
      float top = *std::max_element(logits.begin(), logits.end());
      std::vector<double> prob(logits.size());
      double sum = 0;
      for (size_t k = 0; k < logits.size(); ++k) sum += prob[k] = std::exp(double(logits[k]) - top);
      std::vector<size_t> order(logits.size());
      std::iota(order.begin(), order.end(), 0);
      size_t k5 = std::min<size_t>(5, order.size());
      std::partial_sort(order.begin(), order.begin() + k5, order.end(),
                        [&](size_t a, size_t b) { return logits[a] > logits[b]; });
      std::printf("%s\n", path.c_str());
      for (size_t k = 0; k < k5; ++k)
        std::printf("  %.4f  %s\n", prob[order[k]] / sum, card.classes[order[k]].c_str());
      if (print_logits) {
        std::printf("logits %s", path.c_str());
        for (float v : logits) std::printf(" %.9g", v);
        std::printf("\n");
      }
    }
  } catch (const std::exception& exc) {
    std::fprintf(stderr, "porter_ort: error: %s\n", exc.what());
    code = 2;
  }
  if (memory) g_ort->ReleaseMemoryInfo(memory);
  if (session) g_ort->ReleaseSession(session);
  if (options) g_ort->ReleaseSessionOptions(options);
  if (env) g_ort->ReleaseEnv(env);
  return code;
}
