// porter_weights: list the tensors of a porter weights file (`porter weights export`) and print
// a checksum of each, with the C++17 standard library only (docs/weights.md is the format).
//
//   porter_weights model.weights.npz          one line per tensor:
//     tensor NAME DTYPE SHAPE crc32=XXXXXXXX sum=S
//   porter_weights model.weights.npz --index  the JSON index, verbatim, on stdout
//
// The file is a zip whose members are STORED (np.savez never compresses), so reading it is:
// find the end-of-central-directory record, walk the central directory (sizes, offsets, CRC),
// skip each member's local header, parse the .npy header and take the raw little-endian bytes.
// Every member's CRC-32 is checked against the zip's, so a damaged file is refused.
// crc32 in the output is the CRC-32 (zlib's polynomial) of the tensor's raw data bytes; sum is
// the sum of its values in double precision (in storage order).
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// -- little-endian reads from a byte buffer ----------------------------------------------------
uint64_t read_le(const std::vector<uint8_t>& buf, uint64_t at, int bytes) {
  if (at + bytes > buf.size()) throw Error("truncated file (read past the end)");
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | buf[at + i];
  return v;
}

// -- CRC-32 (IEEE 802.3, the polynomial zip and zlib use) --------------------------------------
uint32_t crc32(const uint8_t* data, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// -- zip: the central directory ------------------------------------------------------------------
struct Member {
  std::string name;
  uint32_t crc = 0;
  uint64_t size = 0;         // uncompressed == compressed (STORED)
  uint64_t data_offset = 0;  // first byte of the member's content
};

std::vector<Member> read_zip(const std::vector<uint8_t>& buf) {
  // End of central directory: 22 bytes + a comment of up to 65535, at the end of the file.
  if (buf.size() < 22) throw Error("not a zip file (too short)");
  uint64_t eocd = 0;
  bool found = false;
  uint64_t lowest = buf.size() > 22 + 65535 ? buf.size() - 22 - 65535 : 0;
  for (uint64_t at = buf.size() - 22;; --at) {
    if (read_le(buf, at, 4) == 0x06054b50) { eocd = at; found = true; break; }
    if (at == lowest) break;
  }
  if (!found) throw Error("not a zip file (no end-of-central-directory record)");
  uint64_t count = read_le(buf, eocd + 10, 2);
  uint64_t cd_offset = read_le(buf, eocd + 16, 4);
  if (count == 0xFFFF || cd_offset == 0xFFFFFFFF) {
    // Zip64: the locator just before the EOCD points at the zip64 EOCD record.
    if (eocd < 20 || read_le(buf, eocd - 20, 4) != 0x07064b50) throw Error("bad zip64 locator");
    uint64_t z = read_le(buf, eocd - 20 + 8, 8);
    if (read_le(buf, z, 4) != 0x06064b50) throw Error("bad zip64 end of central directory");
    count = read_le(buf, z + 32, 8);
    cd_offset = read_le(buf, z + 48, 8);
  }
  std::vector<Member> members;
  uint64_t at = cd_offset;
  for (uint64_t i = 0; i < count; ++i) {
    if (read_le(buf, at, 4) != 0x02014b50) throw Error("bad central directory entry");
    uint64_t method = read_le(buf, at + 10, 2);
    Member m;
    m.crc = static_cast<uint32_t>(read_le(buf, at + 16, 4));
    uint64_t csize = read_le(buf, at + 20, 4);
    uint64_t usize = read_le(buf, at + 24, 4);
    uint64_t name_len = read_le(buf, at + 28, 2);
    uint64_t extra_len = read_le(buf, at + 30, 2);
    uint64_t comment_len = read_le(buf, at + 32, 2);
    uint64_t local = read_le(buf, at + 42, 4);
    if (at + 46 + name_len > buf.size()) throw Error("truncated central directory");
    m.name.assign(reinterpret_cast<const char*>(&buf[at + 46]), name_len);
    // Zip64 extra field (id 1): 8-byte values for exactly the fields saturated above, in order.
    uint64_t e = at + 46 + name_len, end = e + extra_len;
    while (e + 4 <= end) {
      uint64_t id = read_le(buf, e, 2), len = read_le(buf, e + 2, 2), p = e + 4;
      if (id == 1) {
        if (usize == 0xFFFFFFFF) { usize = read_le(buf, p, 8); p += 8; }
        if (csize == 0xFFFFFFFF) { csize = read_le(buf, p, 8); p += 8; }
        if (local == 0xFFFFFFFF) { local = read_le(buf, p, 8); }
      }
      e += 4 + len;
    }
    if (method != 0)
      throw Error(m.name + " is compressed (method " + std::to_string(method) +
                  "): write the file with np.savez, not np.savez_compressed");
    if (csize != usize) throw Error(m.name + ": stored sizes disagree");
    if (read_le(buf, local, 4) != 0x04034b50) throw Error(m.name + ": bad local header");
    // The local header's name and extra lengths may differ from the central ones (numpy writes
    // a zip64 extra field only locally): skip by the local values.
    m.data_offset = local + 30 + read_le(buf, local + 26, 2) + read_le(buf, local + 28, 2);
    m.size = usize;
    if (m.data_offset + m.size > buf.size()) throw Error(m.name + ": truncated member");
    if (crc32(&buf[m.data_offset], m.size) != m.crc) throw Error(m.name + ": CRC-32 mismatch");
    members.push_back(m);
    at += 46 + name_len + extra_len + comment_len;
  }
  return members;
}

// -- npy: header and data ---------------------------------------------------------------------
struct Array {
  std::string descr;           // e.g. "<f4", "<i8", "|b1"
  std::vector<uint64_t> shape;  // () for a scalar
  uint64_t data_offset = 0;    // absolute, in the file buffer
  uint64_t data_size = 0;
};

// The quoted value after 'key': in the header dict, or the parenthesised shape tuple.
std::string dict_value(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw Error("npy header has no '" + key + "'");
  size_t colon = header.find(':', k);
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (header[start] == '\'') return header.substr(start + 1, header.find('\'', start + 1) - start - 1);
  if (header[start] == '(') return header.substr(start + 1, header.find(')', start) - start - 1);
  return header.substr(start, header.find_first_of(",}", start) - start);  // True / False
}

Array read_npy(const std::vector<uint8_t>& buf, const Member& m) {
  uint64_t at = m.data_offset;
  if (m.size < 10 || std::memcmp(&buf[at], "\x93NUMPY", 6) != 0) throw Error(m.name + " is not a .npy array: is this an .npz of arrays?");
  int major = buf[at + 6];
  uint64_t header_len = major == 1 ? read_le(buf, at + 8, 2) : read_le(buf, at + 8, 4);
  uint64_t header_start = at + (major == 1 ? 10 : 12);
  std::string header(reinterpret_cast<const char*>(&buf[header_start]), header_len);
  Array a;
  a.descr = dict_value(header, "descr");
  if (dict_value(header, "fortran_order") != "False") throw Error(m.name + ": Fortran order");
  std::stringstream dims(dict_value(header, "shape"));
  std::string dim;
  while (std::getline(dims, dim, ',')) {
    if (dim.find_first_not_of(' ') != std::string::npos) a.shape.push_back(std::stoull(dim));
  }
  a.data_offset = header_start + header_len;
  a.data_size = m.data_offset + m.size - a.data_offset;
  uint64_t count = 1;
  for (uint64_t d : a.shape) count *= d;
  int item = std::stoi(a.descr.substr(2));
  if (count * item != a.data_size) throw Error(m.name + ": data size does not match the shape");
  return a;
}

// IEEE half -> float (for "<f2" sums).
float half_to_float(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, frac = h & 0x3FF;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(frac), -24);
  else if (exp == 31) v = frac ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(frac | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

double sum_values(const std::vector<uint8_t>& buf, const Array& a) {
  if (a.descr[0] == '>') throw Error("big-endian arrays are not porter-weights/1");
  char kind = a.descr[1];
  int item = std::stoi(a.descr.substr(2));
  double s = 0;
  for (uint64_t at = a.data_offset; at < a.data_offset + a.data_size; at += item) {
    uint64_t raw = read_le(buf, at, item);
    if (kind == 'f' && item == 4) { float f; uint32_t r = static_cast<uint32_t>(raw); std::memcpy(&f, &r, 4); s += f; }
    else if (kind == 'f' && item == 8) { double d; std::memcpy(&d, &raw, 8); s += d; }
    else if (kind == 'f' && item == 2) s += half_to_float(static_cast<uint16_t>(raw));
    else if (kind == 'i') s += static_cast<double>(static_cast<int64_t>(raw << (64 - 8 * item)) >> (64 - 8 * item));
    else if (kind == 'u' || kind == 'b') s += static_cast<double>(raw);
    else throw Error("dtype " + a.descr + " is not a number");
  }
  return s;
}

std::string dtype_name(const std::string& descr) {
  std::string bits = std::to_string(8 * std::stoi(descr.substr(2)));
  switch (descr[1]) {
    case 'f': return "float" + bits;
    case 'i': return "int" + bits;
    case 'u': return "uint" + bits;
    case 'b': return "bool";
    default: return descr;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3 || (argc == 3 && std::string(argv[2]) != "--index")) {
    std::cerr << "usage: porter_weights FILE.npz [--index]\n";
    return 2;
  }
  const std::string index_member = "__porter_index__.npy";
  try {
    std::ifstream in(argv[1], std::ios::binary);
    if (!in) throw Error(std::string("cannot open ") + argv[1]);
    std::vector<uint8_t> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<Member> members = read_zip(buf);
    for (const Member& m : members) {
      Array a = read_npy(buf, m);
      if (m.name == index_member) {
        // The index is a uint8 array of UTF-8 JSON bytes.
        if (argc == 3)
          std::cout.write(reinterpret_cast<const char*>(&buf[a.data_offset]), a.data_size) << "\n";
        else
          std::cout << "index " << a.data_size << " bytes\n";
        continue;
      }
      if (argc == 3) continue;
      std::string shape = "[";
      for (size_t i = 0; i < a.shape.size(); ++i) shape += (i ? "," : "") + std::to_string(a.shape[i]);
      shape += "]";
      char crc[16];
      std::snprintf(crc, sizeof crc, "%08x", crc32(&buf[a.data_offset], a.data_size));
      char sum[40];
      std::snprintf(sum, sizeof sum, "%.17g", sum_values(buf, a));
      std::cout << "tensor " << m.name.substr(0, m.name.size() - 4) << " " << dtype_name(a.descr)
                << " " << shape << " crc32=" << crc << " sum=" << sum << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "porter_weights: error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
