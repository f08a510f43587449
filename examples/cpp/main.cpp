// Classify one image with a porter-built TensorRT engine (TensorRT 10 or 11, C++ API).
//
//   ./porter_infer runs/r18/model.fp16.engine cat.ppm [--top 5]
//
// Everything the app needs comes from the engine's JSON sidecar (model.engine.json): input and
// output names, the preprocessing and the class names. The image is a binary PPM (P6) so the
// example needs no image library: `convert cat.jpg cat.ppm` (ImageMagick) or PIL makes one.
// Resizing here is plain bilinear; porter evaluates with PIL's antialiased bilinear, so for
// bit-exact parity on large downscales feed images already at the sidecar's "resize" size.
//
// TensorRT API used (C++ reference, NvInferRuntime.h): createInferRuntime,
// IRuntime::setEngineHostCodeAllowed, IRuntime::deserializeCudaEngine,
// ICudaEngine::createExecutionContext / getTensorDataType, IExecutionContext::setInputShape /
// getTensorShape / setTensorAddress / enqueueV3. Objects are released with delete (TensorRT 10+).

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#define CUDA_CHECK(call)                                                                      \
    do {                                                                                      \
        cudaError_t err_ = (call);                                                            \
        if (err_ != cudaSuccess)                                                              \
            throw std::runtime_error(std::string(#call) + ": " + cudaGetErrorString(err_));   \
    } while (0)

// ---------------------------------------------------------------------------------------------
// A tiny JSON reader: enough for the sidecar (objects, arrays, strings, numbers, literals).
// ---------------------------------------------------------------------------------------------
struct Json {
    enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
    bool boolean = false;
    double number = 0;
    std::string text;
    std::vector<std::string> keys;  // Object keys, parallel to items
    std::vector<Json> items;        // Array elements or Object values

    const Json& operator[](const std::string& key) const {
        for (size_t i = 0; i < keys.size(); ++i)
            if (keys[i] == key) return items[i];
        throw std::runtime_error("sidecar has no key '" + key + "'");
    }
    const Json& operator[](size_t i) const { return items.at(i); }
};

class JsonParser {
public:
    explicit JsonParser(std::string s) : s_(std::move(s)) {}
    Json parse() {
        Json v = value();
        skip();
        if (i_ != s_.size()) fail("trailing characters");
        return v;
    }

private:
    std::string s_;
    size_t i_ = 0;

    [[noreturn]] void fail(const char* what) {
        throw std::runtime_error("sidecar JSON: " + std::string(what) + " at byte " +
                                 std::to_string(i_));
    }
    void skip() { while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_; }
    bool eat(char c) { skip(); if (i_ < s_.size() && s_[i_] == c) { ++i_; return true; } return false; }

    Json value() {
        skip();
        if (i_ >= s_.size()) fail("unexpected end");
        Json v;
        char c = s_[i_];
        if (c == '{') {
            ++i_;
            v.kind = Json::Object;
            if (eat('}')) return v;
            do {
                skip();
                v.keys.push_back(string());
                if (!eat(':')) fail("expected ':'");
                v.items.push_back(value());
            } while (eat(','));
            if (!eat('}')) fail("expected '}'");
        } else if (c == '[') {
            ++i_;
            v.kind = Json::Array;
            if (eat(']')) return v;
            do { v.items.push_back(value()); } while (eat(','));
            if (!eat(']')) fail("expected ']'");
        } else if (c == '"') {
            v.kind = Json::String;
            v.text = string();
        } else if (s_.compare(i_, 4, "true") == 0) { v.kind = Json::Bool; v.boolean = true; i_ += 4; }
        else if (s_.compare(i_, 5, "false") == 0) { v.kind = Json::Bool; i_ += 5; }
        else if (s_.compare(i_, 4, "null") == 0) { i_ += 4; }
        else {
            size_t used = 0;
            v.kind = Json::Number;
            v.number = std::stod(s_.substr(i_, 32), &used);
            i_ += used;
        }
        return v;
    }
    std::string string() {
        if (s_[i_] != '"') fail("expected a string");
        std::string out;
        for (++i_; i_ < s_.size() && s_[i_] != '"'; ++i_) {
            if (s_[i_] == '\\' && i_ + 1 < s_.size()) {
                char e = s_[++i_];
                out += e == 'n' ? '\n' : e == 't' ? '\t' : e;  // \uXXXX is kept as-is: not needed
            } else {
                out += s_[i_];
            }
        }
        ++i_;
        return out;
    }
};

static std::string readFile(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// ---------------------------------------------------------------------------------------------
// Image: binary PPM -> resize shorter side -> centre crop -> scale, mean/std -> CHW float.
// ---------------------------------------------------------------------------------------------
struct Image { int w = 0, h = 0; std::vector<float> rgb; };  // HWC, 0..255

static Image readPpm(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::string magic;
    int maxval = 0;
    Image im;
    f >> magic >> im.w >> im.h >> maxval;
    if (!f || magic != "P6" || maxval != 255) throw std::runtime_error(path + ": not a binary 8-bit PPM (P6)");
    f.get();  // the single whitespace after the header
    std::vector<unsigned char> bytes(static_cast<size_t>(im.w) * im.h * 3);
    f.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error(path + ": truncated PPM");
    im.rgb.assign(bytes.begin(), bytes.end());
    return im;
}

static Image resizeBilinear(const Image& src, int w, int h) {
    Image dst{w, h, std::vector<float>(static_cast<size_t>(w) * h * 3)};
    const float sx = static_cast<float>(src.w) / w, sy = static_cast<float>(src.h) / h;
    for (int y = 0; y < h; ++y) {
        float fy = std::clamp((y + 0.5f) * sy - 0.5f, 0.f, static_cast<float>(src.h - 1));
        int y0 = static_cast<int>(fy), y1 = std::min(y0 + 1, src.h - 1);
        float wy = fy - y0;
        for (int x = 0; x < w; ++x) {
            float fx = std::clamp((x + 0.5f) * sx - 0.5f, 0.f, static_cast<float>(src.w - 1));
            int x0 = static_cast<int>(fx), x1 = std::min(x0 + 1, src.w - 1);
            float wx = fx - x0;
            for (int c = 0; c < 3; ++c) {
                auto at = [&](int yy, int xx) { return src.rgb[(static_cast<size_t>(yy) * src.w + xx) * 3 + c]; };
                float top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx;
                float bot = at(y1, x0) * (1 - wx) + at(y1, x1) * wx;
                dst.rgb[(static_cast<size_t>(y) * w + x) * 3 + c] = top * (1 - wy) + bot * wy;
            }
        }
    }
    return dst;
}

static std::vector<float> preprocess(const Image& im, const Json& pre) {
    const int resize = static_cast<int>(pre["resize"].number), crop = static_cast<int>(pre["crop"].number);
    const float scale = static_cast<float>(pre["scale"].number);
    const bool bgr = pre["color_order"].text == "BGR";
    const double shorter = std::min(im.w, im.h);
    Image r = resizeBilinear(im, static_cast<int>(std::lround(im.w * resize / shorter)),
                             static_cast<int>(std::lround(im.h * resize / shorter)));
    const int left = static_cast<int>(std::lround((r.w - crop) / 2.0));
    const int top = static_cast<int>(std::lround((r.h - crop) / 2.0));
    std::vector<float> chw(static_cast<size_t>(3) * crop * crop);
    for (int c = 0; c < 3; ++c) {
        const int srcC = bgr ? 2 - c : c;
        const float mean = static_cast<float>(pre["mean"][c].number), stdv = static_cast<float>(pre["std"][c].number);
        for (int y = 0; y < crop; ++y)
            for (int x = 0; x < crop; ++x) {
                float v = r.rgb[(static_cast<size_t>(y + top) * r.w + (x + left)) * 3 + srcC] * scale;
                chw[(static_cast<size_t>(c) * crop + y) * crop + x] = (v - mean) / stdv;
            }
    }
    return chw;
}

// ---------------------------------------------------------------------------------------------
// TensorRT
// ---------------------------------------------------------------------------------------------
class Logger : public nvinfer1::ILogger {
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
    }
};

int main(int argc, char** argv) try {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0] << " MODEL.engine IMAGE.ppm [--top K]\n";
        return 2;
    }
    const std::string enginePath = argv[1], imagePath = argv[2];
    int topK = (argc >= 5 && std::string(argv[3]) == "--top") ? std::atoi(argv[4]) : 5;

    const Json side = JsonParser(readFile(enginePath + ".json")).parse();
    const std::string inName = side["inputs"][0]["name"].text;
    const std::string outName = side["outputs"][0]["name"].text;
    const std::vector<float> input = preprocess(readPpm(imagePath), side["preprocess"]);
    const int crop = static_cast<int>(side["preprocess"]["crop"].number);

    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    if (!runtime) throw std::runtime_error("createInferRuntime failed");
    if (side["version_compatible"].boolean) runtime->setEngineHostCodeAllowed(true);  // trusted plans only
    const std::string plan = readFile(enginePath);
    std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
    if (!engine) throw std::runtime_error("deserializeCudaEngine failed: built by another TensorRT version or for another GPU?");
    std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
    if (!context) throw std::runtime_error("createExecutionContext failed");
    if (engine->getTensorDataType(outName.c_str()) != nvinfer1::DataType::kFLOAT)
        throw std::runtime_error("this example expects a float32 output");

    if (!context->setInputShape(inName.c_str(), nvinfer1::Dims4{1, 3, crop, crop}))
        throw std::runtime_error("setInputShape failed: batch 1 outside the engine's profile?");
    const nvinfer1::Dims outDims = context->getTensorShape(outName.c_str());
    const int64_t outCount = std::accumulate(outDims.d, outDims.d + outDims.nbDims, int64_t{1},
                                             std::multiplies<int64_t>());
    std::vector<float> logits(static_cast<size_t>(outCount));

    void *dIn = nullptr, *dOut = nullptr;
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreate(&stream));
    CUDA_CHECK(cudaMalloc(&dIn, input.size() * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&dOut, logits.size() * sizeof(float)));
    CUDA_CHECK(cudaMemcpyAsync(dIn, input.data(), input.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
    if (!context->setTensorAddress(inName.c_str(), dIn) || !context->setTensorAddress(outName.c_str(), dOut))
        throw std::runtime_error("setTensorAddress failed");
    if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");
    CUDA_CHECK(cudaMemcpyAsync(logits.data(), dOut, logits.size() * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaFree(dIn));
    CUDA_CHECK(cudaFree(dOut));
    CUDA_CHECK(cudaStreamDestroy(stream));

    // Softmax and top-K with the sidecar's class names.
    const float mx = *std::max_element(logits.begin(), logits.end());
    std::vector<double> p(logits.size());
    double sum = 0;
    for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp(logits[i] - mx);
    std::vector<size_t> order(p.size());
    std::iota(order.begin(), order.end(), 0);
    topK = std::clamp(topK, 1, static_cast<int>(order.size()));
    std::partial_sort(order.begin(), order.begin() + topK, order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
    const Json& classes = side["classes"];
    for (int k = 0; k < topK; ++k)
        std::printf("%-20s %.4f\n", classes[order[k]].text.c_str(), p[order[k]] / sum);
    return 0;
} catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
}
