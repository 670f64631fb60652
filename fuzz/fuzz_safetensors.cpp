// fuzz/fuzz_safetensors.cpp — libFuzzer target for nn::safetensors_parse.
//
// The input is the file. Whatever the parser accepts must satisfy the
// format's rules (checked here independently of the parser): the header
// length, every entry's byte range matching shape x dtype size, the data
// section covered exactly once, unique names, valid UTF-8. Accepted files
// then convert to float32, and go through StWriter and back unchanged.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.hpp"
#include "nn.hpp"

static bool valid_utf8(const std::string& s) {
    const unsigned char* p = (const unsigned char*)s.data();
    const unsigned char* e = p + s.size();
    while (p < e) {
        unsigned c = *p++;
        int more;
        uint32_t cp;
        if (c < 0x80) continue;
        if (c >= 0xC2 && c <= 0xDF) more = 1, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF) more = 2, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4) more = 3, cp = c & 0x07;
        else return false;
        if (e - p < more) return false;
        for (int i = 0; i < more; ++i) {
            if ((p[i] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        p += more;
        if ((more == 2 && cp < 0x800) || (more == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
    }
    return true;
}

static bool convertible(nn::DType t) {
    return t == nn::DType::F32 || t == nn::DType::F16 || t == nn::DType::BF16 || t == nn::DType::F64 ||
           t == nn::DType::I64;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    nn::SafeTensors st;
    nn::Status s = nn::safetensors_parse(data, size, "fuzz", &st);
    if (!s) {
        fuzz::check_message(s.message());
        if (std::strncmp(s.message(), "safetensors fuzz:", 17) != 0) __builtin_trap();
        return 0;
    }

    fuzz::accepted("safetensors_parse");
    // --- The parser accepted it: check the rules ourselves. ---
    if (size < 8) __builtin_trap();
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
    if (n > 100000000ull || n > size - 8 || st.data_start != 8 + n) __builtin_trap();
    if (st.bytes.size() != size || std::memcmp(st.bytes.data(), data, size) != 0) __builtin_trap();
    const uint64_t data_size = size - st.data_start;

    std::vector<const nn::StEntry*> by_begin;
    std::map<std::string, int> names;
    for (const nn::StEntry& e : st.entries) {
        if (e.ndim < 0 || e.ndim > 8 || e.name == "__metadata__") __builtin_trap();
        if (!valid_utf8(e.name) || names[e.name]++) __builtin_trap();
        unsigned __int128 bytes = nn::dtype_size(e.dtype);
        for (int i = 0; i < e.ndim; ++i) bytes *= e.shape[i];
        if (e.begin > e.end || e.end > data_size || bytes != (unsigned __int128)(e.end - e.begin))
            __builtin_trap();
        if (e.numel() * nn::dtype_size(e.dtype) != e.end - e.begin) __builtin_trap();
        by_begin.push_back(&e);
    }
    std::stable_sort(by_begin.begin(), by_begin.end(),
                     [](const nn::StEntry* a, const nn::StEntry* b) { return a->begin < b->begin; });
    uint64_t at = 0;  // every byte covered exactly once (empty tensors anywhere in range)
    for (const nn::StEntry* e : by_begin) {
        if (e->begin == e->end) continue;
        if (e->begin != at) __builtin_trap();
        at = e->end;
    }
    if (at != data_size) __builtin_trap();
    std::map<std::string, std::string> meta;
    for (const auto& kv : st.metadata) {
        if (!valid_utf8(kv.first) || !valid_utf8(kv.second) || meta.count(kv.first)) __builtin_trap();
        meta[kv.first] = kv.second;
        if (kv.first.find('\0') == std::string::npos) {
            const char* v = st.meta(kv.first.c_str());
            if (!v) __builtin_trap();
            if (kv.second.find('\0') == std::string::npos && kv.second != v) __builtin_trap();
        }
    }

    // --- Lookups and conversion. ---
    std::vector<float> buf;
    for (const nn::StEntry& e : st.entries) {
        if (e.name.find('\0') == std::string::npos && st.find(e.name.c_str()) != &e) __builtin_trap();
        if (!convertible(e.dtype)) continue;
        buf.assign(e.numel() + 1, 0.0f);
        if (!st.to_f32(e, buf.data(), e.numel())) __builtin_trap();
        if (st.to_f32(e, buf.data(), e.numel() + 1)) __builtin_trap();  // wrong count: an error
    }

    // --- Through the writer and back. ---
    nn::StWriter w;
    for (const nn::StEntry& e : st.entries) {
        nn::StWriter::Item it;
        it.name = e.name;
        it.dtype = e.dtype;
        it.shape.assign(e.shape, e.shape + e.ndim);
        it.data = st.bytes.data() + st.data_start + e.begin;
        it.bytes = e.end - e.begin;
        w.items.push_back(it);
    }
    w.metadata = st.metadata;
    std::string path = std::string(fuzz::temp_dir()) + "/nn_fuzz_" + std::to_string((long)getpid()) + "_rt.st";
    static bool registered = false;
    if (!registered) {
        registered = true;
        fuzz::write_temp("rt.st", nullptr, 0);  // registers the path for removal at exit
    }
    nn::Status ws = w.write(path.c_str());
    if (!ws) __builtin_trap();
    nn::SafeTensors back;
    nn::Status ls = nn::safetensors_load(path.c_str(), &back);
    if (!ls) __builtin_trap();
    if ((back.data_start - 8) % 8 != 0 || back.entries.size() != st.entries.size()) __builtin_trap();
    std::map<std::string, const nn::StEntry*> got;
    for (const nn::StEntry& e : back.entries) got[e.name] = &e;
    for (const nn::StEntry& e : st.entries) {
        auto it = got.find(e.name);
        if (it == got.end()) __builtin_trap();
        const nn::StEntry& b = *it->second;
        if (b.dtype != e.dtype || b.ndim != e.ndim || b.end - b.begin != e.end - e.begin) __builtin_trap();
        for (int i = 0; i < e.ndim; ++i)
            if (b.shape[i] != e.shape[i]) __builtin_trap();
        if (e.end > e.begin && std::memcmp(back.bytes.data() + back.data_start + b.begin,
                                           st.bytes.data() + st.data_start + e.begin, e.end - e.begin) != 0)
            __builtin_trap();
    }
    std::map<std::string, std::string> meta_back(back.metadata.begin(), back.metadata.end());
    if (meta_back != meta) __builtin_trap();
    return 0;
}
