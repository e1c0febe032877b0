//! A small pure-Rust decoder for greyscale sequential-DCT Huffman JPEG with 8- or 12-bit
//! samples: what DICOM transfer syntax 1.2.840.10008.1.2.4.51 (JPEG Extended, processes 2
//! and 4) holds in CT files with BitsStored > 8.
//!
//! It exists because the `jpeg-decoder` crate that dicom-pixeldata uses has no 12-bit DCT,
//! so 12-bit JPEG Extended CT would otherwise be refused. Only what such a file needs is
//! supported, and everything else is refused with a reason:
//!
//! * SOI, APPn and COM (skipped), DQT (8- and 16-bit tables), DHT (up to 4 DC and 4 AC
//!   tables), DRI with RST0-7 restart markers, SOS, EOI; 0xFF00 byte stuffing and 0xFF fill
//!   bytes before markers;
//! * SOF0 and SOF1 (baseline and extended sequential DCT, Huffman coding) with a precision
//!   of 8 or 12 bits and exactly one component. With one component the scan is
//!   non-interleaved, so whatever its sampling factors say, an MCU is one 8x8 block; sizes
//!   that are not a multiple of 8 are decoded in whole blocks and cropped.
//! * Refused: progressive (SOF2/6/10/14), lossless (SOF3/7/11/15), hierarchical, arithmetic
//!   coding (SOF9-15, DAC), JPEG-LS and other unknown markers, DNL (height 0), more than one
//!   component or scan, and any malformed or truncated data (unlike libjpeg, which warns and
//!   pads missing data with zeros, a stream that ends before its last block is an error).
//!
//! Samples are dequantised and transformed with the integer "islow" inverse DCT of the IJG
//! libjpeg (`jidctint.c`, as in libjpeg-turbo): 13-bit constants, PASS1_BITS 2 for 8-bit and
//! 1 for 12-bit samples, the same rounding, and the same range-limit table after the level
//! shift by 2^(P-1). Output therefore matches libjpeg-based decoders (DCMTK, GDCM, Pillow)
//! exactly and other decoders to about one level.
//!
//! The decoder is fuzzed through the slice reader: every read is bounds-checked, every loop
//! consumes input or fails, arithmetic on untrusted values cannot overflow, and the only
//! allocation proportional to the header is the `width * height` output, made after the size
//! has been checked against the caller's limit.

use std::fmt;

/// A decoded greyscale image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decoded {
    pub width: u32,
    pub height: u32,
    /// Sample precision of the frame header: 8 or 12.
    pub precision: u8,
    /// Row-major `width * height` samples in `0..2^precision`.
    pub samples: Vec<u16>,
}

/// Why a stream was not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum JpegError {
    /// A valid JPEG feature this decoder does not implement (progressive, colour...).
    Unsupported(String),
    /// Malformed or truncated data.
    Corrupt(String),
}

impl fmt::Display for JpegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(m) => write!(f, "unsupported JPEG: {m}"),
            Self::Corrupt(m) => write!(f, "corrupt JPEG: {m}"),
        }
    }
}

type Result<T> = std::result::Result<T, JpegError>;

fn corrupt<T>(message: impl Into<String>) -> Result<T> {
    Err(JpegError::Corrupt(message.into()))
}

fn unsupported<T>(message: impl Into<String>) -> Result<T> {
    Err(JpegError::Unsupported(message.into()))
}

/// Zig-zag position -> natural (row-major) index in the 8x8 block.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7,
    14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39,
    46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Decode one greyscale sequential-DCT JPEG stream. Frames wider than `max_size.0` or taller
/// than `max_size.1` are refused before their samples are allocated.
pub(super) fn decode(data: &[u8], max_size: (u32, u32)) -> Result<Decoded> {
    let mut r = Reader { data, pos: 0 };
    if r.byte()? != 0xFF || r.byte()? != 0xD8 {
        return corrupt("no SOI marker at the start");
    }
    let mut tables = Tables::default();
    let mut frame: Option<Frame> = None;
    loop {
        let marker = r.marker()?;
        match marker {
            // APPn, COM: application data and comments
            0xE0..=0xEF | 0xFE => {
                r.segment()?;
            }
            0xDB => tables.read_dqt(r.segment()?)?,
            0xC4 => tables.read_dht(r.segment()?)?,
            0xDD => {
                let seg = r.segment()?;
                if seg.len() != 2 {
                    return corrupt(format!("DRI segment of {} bytes", seg.len()));
                }
                tables.restart_interval = u16::from_be_bytes([seg[0], seg[1]]);
            }
            0xC0 | 0xC1 => {
                if frame.is_some() {
                    return corrupt("second frame header");
                }
                frame = Some(Frame::read(r.segment()?, marker, max_size)?);
            }
            0xDA => {
                let Some(frame) = frame else {
                    return corrupt("scan before the frame header");
                };
                let seg = r.segment()?;
                let scan = frame.read_sos(seg, &tables)?;
                let samples = decode_scan(&data[r.pos..], &frame, &scan, tables.restart_interval)?;
                // one component, hence one scan: nothing after it changes the image
                return Ok(Decoded {
                    width: u32::from(frame.width),
                    height: u32::from(frame.height),
                    precision: frame.precision,
                    samples,
                });
            }
            0xD9 => return corrupt("EOI before any scan"),
            0xD8 => return corrupt("second SOI marker"),
            0xC2 | 0xC6 | 0xCA | 0xCE => return unsupported(format!("progressive DCT (SOF{})", sof(marker))),
            0xC3 | 0xC7 | 0xCB | 0xCF => return unsupported(format!("lossless (SOF{})", sof(marker))),
            0xC5 => return unsupported("hierarchical (SOF5)"),
            0xC9 | 0xCD => return unsupported(format!("arithmetic coding (SOF{})", sof(marker))),
            0xCC => return unsupported("arithmetic coding (DAC)"),
            0xDC => return unsupported("DNL marker (height defined after the scan)"),
            0xDE | 0xDF => return unsupported("hierarchical (DHP/EXP)"),
            0xF7 | 0xF8 => return unsupported("JPEG-LS"),
            0xD0..=0xD7 => return corrupt(format!("RST{} outside a scan", marker - 0xD0)),
            other => return unsupported(format!("marker 0xFF{other:02X}")),
        }
    }
}

/// The number of a SOFn marker (`0xC2` -> "2").
fn sof(marker: u8) -> String {
    (marker - 0xC0).to_string()
}

/// Byte-level reader of the marker segments.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or(JpegError::Corrupt("unexpected end of data".into()))?;
        self.pos += 1;
        Ok(b)
    }

    /// The next marker code, after any 0xFF fill bytes.
    fn marker(&mut self) -> Result<u8> {
        if self.byte()? != 0xFF {
            return corrupt(format!("expected a marker at byte {}", self.pos - 1));
        }
        let mut code = self.byte()?;
        while code == 0xFF {
            code = self.byte()?;
        }
        if code == 0 {
            return corrupt(format!("stuffed 0xFF00 outside a scan at byte {}", self.pos - 2));
        }
        Ok(code)
    }

    /// The payload of a marker segment (after its 2-byte length).
    fn segment(&mut self) -> Result<&'a [u8]> {
        let len = usize::from(u16::from_be_bytes([self.byte()?, self.byte()?]));
        if len < 2 {
            return corrupt(format!("segment length {len}"));
        }
        let end = self.pos + len - 2;
        let payload = self
            .data
            .get(self.pos..end)
            .ok_or(JpegError::Corrupt("segment runs past the end of data".into()))?;
        self.pos = end;
        Ok(payload)
    }
}

/// A canonical Huffman table, decoded code length by code length (as libjpeg's slow path).
#[derive(Debug, Clone)]
struct Huffman {
    /// Largest code of each length 1..=16 (index = length), -1 when none.
    max_code: [i32; 17],
    /// `symbol index = code + offset[len]`.
    offset: [i32; 17],
    symbols: Vec<u8>,
}

impl Huffman {
    /// Build from the DHT counts per length and the symbols; refuses over-subscribed tables
    /// (a code that does not fit its length, or the all-ones code), as libjpeg does.
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Result<Self> {
        let mut max_code = [-1i32; 17];
        let mut offset = [0i32; 17];
        let mut code = 0i32;
        let mut index = 0i32;
        for len in 1..=16 {
            let n = i32::from(counts[len - 1]);
            offset[len] = index - code;
            code += n;
            index += n;
            if n > 0 {
                if code >= 1 << len {
                    return corrupt("bad Huffman table (too many codes of one length)");
                }
                max_code[len] = code - 1;
            }
            code <<= 1;
        }
        Ok(Self {
            max_code,
            offset,
            symbols: symbols.to_vec(),
        })
    }

    fn decode(&self, bits: &mut BitReader<'_>) -> Result<u8> {
        let peek = i32::from(bits.peek16());
        for len in 1..=16 {
            let code = peek >> (16 - len);
            if code <= self.max_code[len] {
                bits.consume(len as u32)?;
                // in bounds: the codes of length `len` index symbols that were counted
                let i = (code + self.offset[len]) as usize;
                return self
                    .symbols
                    .get(i)
                    .copied()
                    .ok_or(JpegError::Corrupt("bad Huffman table".into()));
            }
        }
        corrupt("invalid Huffman code")
    }
}

/// Tables defined so far: they may come before or after the frame header.
#[derive(Debug, Default)]
struct Tables {
    /// Quantisation tables in natural (row-major) order.
    quant: [Option<[u16; 64]>; 4],
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
    /// MCUs between restart markers; 0 = none.
    restart_interval: u16,
}

impl Tables {
    fn read_dqt(&mut self, mut seg: &[u8]) -> Result<()> {
        while let Some((&pq_tq, rest)) = seg.split_first() {
            let (pq, tq) = (pq_tq >> 4, usize::from(pq_tq & 15));
            if tq > 3 {
                return corrupt(format!("quantisation table {tq}"));
            }
            let size = match pq {
                0 => 64,
                1 => 128,
                _ => return corrupt(format!("quantisation table precision {pq}")),
            };
            let Some(values) = rest.get(..size) else {
                return corrupt("DQT segment too short");
            };
            let mut table = [0u16; 64];
            for (k, &natural) in ZIGZAG.iter().enumerate() {
                table[natural] = if pq == 0 {
                    u16::from(values[k])
                } else {
                    u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
                };
            }
            self.quant[tq] = Some(table);
            seg = &rest[size..];
        }
        Ok(())
    }

    fn read_dht(&mut self, mut seg: &[u8]) -> Result<()> {
        while let Some((&tc_th, rest)) = seg.split_first() {
            let (tc, th) = (tc_th >> 4, usize::from(tc_th & 15));
            if tc > 1 || th > 3 {
                return corrupt(format!("Huffman table class {tc} id {th}"));
            }
            let Some(counts) = rest.get(..16) else {
                return corrupt("DHT segment too short");
            };
            let counts: [u8; 16] = counts.try_into().expect("16 bytes");
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            if total > 256 {
                return corrupt(format!("Huffman table with {total} codes"));
            }
            let Some(symbols) = rest.get(16..16 + total) else {
                return corrupt("DHT segment too short");
            };
            // a DC symbol is a magnitude category: at most 15 bits (12-bit samples need 15)
            if tc == 0 && symbols.iter().any(|&s| s > 15) {
                return corrupt("DC Huffman symbol above 15");
            }
            let table = Some(Huffman::new(&counts, symbols)?);
            if tc == 0 {
                self.dc[th] = table;
            } else {
                self.ac[th] = table;
            }
            seg = &rest[16 + total..];
        }
        Ok(())
    }
}

/// The frame header of a one-component image.
#[derive(Debug, Clone)]
struct Frame {
    precision: u8,
    width: u16,
    height: u16,
    component_id: u8,
    quant_table: usize,
}

impl Frame {
    fn read(seg: &[u8], marker: u8, max_size: (u32, u32)) -> Result<Self> {
        let Some(&[precision, h0, h1, w0, w1, count]) = seg.get(..6) else {
            return corrupt("SOF segment too short");
        };
        if precision != 8 && precision != 12 {
            return unsupported(format!("{precision}-bit samples (SOF{})", sof(marker)));
        }
        if count != 1 {
            return unsupported(format!("{count} components (only greyscale is supported)"));
        }
        if seg.len() != 6 + 3 {
            return corrupt(format!("SOF segment of {} bytes for one component", seg.len()));
        }
        let (height, width) = (u16::from_be_bytes([h0, h1]), u16::from_be_bytes([w0, w1]));
        if width == 0 || height == 0 {
            return unsupported(format!("frame size {width}x{height} (DNL is not supported)"));
        }
        if u32::from(width) > max_size.0 || u32::from(height) > max_size.1 {
            return corrupt(format!(
                "frame size {width}x{height} exceeds the limit {}x{}",
                max_size.0, max_size.1
            ));
        }
        let (component_id, sampling, tq) = (seg[6], seg[7], seg[8]);
        let (h, v) = (sampling >> 4, sampling & 15);
        // any factors are 1x1 in effect for one component, but they must be valid ones
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return corrupt(format!("sampling factors {h}x{v}"));
        }
        if tq > 3 {
            return corrupt(format!("quantisation table {tq}"));
        }
        Ok(Self {
            precision,
            width,
            height,
            component_id,
            quant_table: usize::from(tq),
        })
    }

    /// Parse the scan header and latch the tables it uses.
    fn read_sos<'t>(&self, seg: &[u8], tables: &'t Tables) -> Result<Scan<'t>> {
        let Some(&count) = seg.first() else {
            return corrupt("SOS segment too short");
        };
        if count != 1 {
            return corrupt(format!("scan of {count} components in a one-component image"));
        }
        // Ss, Se, Ah/Al follow; libjpeg ignores them for sequential frames, and so do we
        let Some(&[id, td_ta, _, _, _]) = seg.get(1..) else {
            return corrupt(format!("SOS segment of {} bytes", seg.len()));
        };
        if id != self.component_id {
            return corrupt(format!("scan of component {id}, frame has {}", self.component_id));
        }
        let (td, ta) = (usize::from(td_ta >> 4), usize::from(td_ta & 15));
        let dc = tables.dc.get(td).and_then(Option::as_ref);
        let ac = tables.ac.get(ta).and_then(Option::as_ref);
        let (Some(dc), Some(ac)) = (dc, ac) else {
            return corrupt(format!("undefined Huffman table (DC {td}, AC {ta})"));
        };
        let Some(quant) = tables.quant[self.quant_table] else {
            return corrupt(format!("undefined quantisation table {}", self.quant_table));
        };
        Ok(Scan { dc, ac, quant })
    }
}

/// What the scan decodes with.
struct Scan<'t> {
    dc: &'t Huffman,
    ac: &'t Huffman,
    quant: [u16; 64],
}

/// Bit reader over entropy-coded data. At a marker (or the end of data) it stops and pads
/// with zero bits for look-ahead only: consuming a padded bit is an error (truncated data).
struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to read; at a marker, the first of its 0xFF bytes.
    pos: usize,
    /// Bits not yet consumed, right-aligned; `count` of them are valid.
    acc: u64,
    count: u32,
    /// A marker or the end of data was reached: no more bytes until `restart`.
    stopped: bool,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            acc: 0,
            count: 0,
            stopped: false,
        }
    }

    /// Top up `acc` to more than 48 bits (at most 56) unless a marker or the end stops it.
    fn fill(&mut self) {
        while self.count <= 48 && !self.stopped {
            let Some(&b) = self.data.get(self.pos) else {
                self.stopped = true;
                break;
            };
            let byte = if b == 0xFF {
                // like libjpeg: any run of 0xFF followed by 0x00 is one data 0xFF; anything
                // else after the run is a marker
                let mut next = self.pos + 1;
                while self.data.get(next) == Some(&0xFF) {
                    next += 1;
                }
                if self.data.get(next) != Some(&0) {
                    self.stopped = true;
                    break;
                }
                self.pos = next + 1;
                0xFF
            } else {
                self.pos += 1;
                b
            };
            self.acc = (self.acc << 8) | u64::from(byte);
            self.count += 8;
        }
    }

    /// The next 16 bits, zero-padded past the data.
    fn peek16(&mut self) -> u16 {
        if self.count < 16 {
            self.fill();
        }
        let bits = if self.count >= 16 {
            self.acc >> (self.count - 16)
        } else {
            self.acc << (16 - self.count)
        };
        (bits & 0xFFFF) as u16
    }

    fn consume(&mut self, n: u32) -> Result<()> {
        if n > self.count {
            return corrupt("entropy-coded data ends early (truncated)");
        }
        self.count -= n;
        self.acc &= (1u64 << self.count) - 1;
        Ok(())
    }

    /// `n` (0..=16) bits as an unsigned number.
    fn bits(&mut self, n: u32) -> Result<u32> {
        if n == 0 {
            return Ok(0);
        }
        let v = u32::from(self.peek16()) >> (16 - n);
        self.consume(n)?;
        Ok(v)
    }

    /// `n` bits as a signed magnitude-category value (F.2.2.1 EXTEND).
    fn receive_extend(&mut self, n: u32) -> Result<i32> {
        let v = self.bits(n)? as i32;
        if n > 0 && v < 1 << (n - 1) {
            Ok(v - (1 << n) + 1)
        } else {
            Ok(v)
        }
    }

    /// At a restart boundary: drop the bits of the current byte, skip anything up to the
    /// next marker (libjpeg does the same, with a warning) and require `RST<expected>`.
    fn restart(&mut self, expected: u8) -> Result<()> {
        self.acc = 0;
        self.count = 0;
        while !self.stopped {
            // bytes that were not buffered yet: read and drop them up to the marker
            self.fill();
            self.acc = 0;
            self.count = 0;
        }
        let data = self.data;
        let mut pos = self.pos;
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        match data.get(pos) {
            Some(&m) if m == 0xD0 + expected => {
                self.pos = pos + 1;
                self.stopped = false;
                Ok(())
            }
            Some(&m) => corrupt(format!("expected RST{expected}, found marker 0xFF{m:02X}")),
            None => corrupt(format!("expected RST{expected}, found the end of data")),
        }
    }
}

/// Decode the entropy-coded data of the only scan into row-major samples.
fn decode_scan(data: &[u8], frame: &Frame, scan: &Scan<'_>, restart_interval: u16) -> Result<Vec<u16>> {
    let (width, height) = (usize::from(frame.width), usize::from(frame.height));
    let (blocks_x, blocks_y) = (width.div_ceil(8), height.div_ceil(8));
    let mut samples = vec![0u16; width * height];
    let mut bits = BitReader::new(data);
    let mut predictor = 0i32;
    let mut next_restart = 0u8;
    let mut coefs = [0i16; 64];
    let mut block = [0u16; 64];
    for mcu in 0..blocks_x * blocks_y {
        if restart_interval > 0 && mcu > 0 && mcu % usize::from(restart_interval) == 0 {
            bits.restart(next_restart)?;
            next_restart = (next_restart + 1) & 7;
            predictor = 0;
        }
        decode_block(&mut bits, scan, &mut predictor, &mut coefs)?;
        idct_islow(&coefs, &scan.quant, frame.precision, &mut block);
        // copy the block, cropped to the image
        let (x0, y0) = ((mcu % blocks_x) * 8, (mcu / blocks_x) * 8);
        let w = (width - x0).min(8);
        for (row, y) in (y0..height.min(y0 + 8)).enumerate() {
            let start = y * width + x0;
            samples[start..start + w].copy_from_slice(&block[row * 8..row * 8 + w]);
        }
    }
    Ok(samples)
}

/// Huffman-decode one block into zig-zag-undone coefficients (not yet dequantised).
fn decode_block(
    bits: &mut BitReader<'_>,
    scan: &Scan<'_>,
    predictor: &mut i32,
    coefs: &mut [i16; 64],
) -> Result<()> {
    *coefs = [0; 64];
    let s = scan.dc.decode(bits)?;
    let diff = bits.receive_extend(u32::from(s))?;
    *predictor = predictor.wrapping_add(diff);
    // libjpeg stores coefficients as 16-bit JCOEF
    coefs[0] = *predictor as i16;
    let mut k = 1;
    while k < 64 {
        let rs = scan.ac.decode(bits)?;
        let (run, size) = (usize::from(rs >> 4), u32::from(rs & 15));
        if size == 0 {
            if run != 15 {
                break; // EOB
            }
            k += 16; // ZRL: sixteen zeros
            continue;
        }
        k += run;
        if k > 63 {
            return corrupt("AC coefficients past the end of the block");
        }
        coefs[ZIGZAG[k]] = bits.receive_extend(size)? as i16;
        k += 1;
    }
    Ok(())
}

// libjpeg's jidctint.c (jpeg_idct_islow): 13-bit fixed-point constants.
const CONST_BITS: u32 = 13;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

/// libjpeg's DESCALE: divide by 2^n, rounding half up.
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// One 1-D 8-point inverse DCT of `jidctint.c` on `v[0..8]` (already dequantised, or the
/// work array), before its final descale: returns the eight outputs scaled by 2^CONST_BITS.
/// The arithmetic is 64-bit, as libjpeg's INT32 (`long`) is on LP64 systems, so it cannot
/// overflow on any 16-bit coefficient times 16-bit quantiser.
fn idct_1d(v: [i64; 8]) -> [i64; 8] {
    // even part: the rotator is sqrt(2)*c(-6)
    let (z2, z3) = (v[2], v[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (v[0] + v[4]) << CONST_BITS;
    let tmp1 = (v[0] - v[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);

    // odd part: i0..i3 are y7, y5, y3, y1
    let (mut t0, mut t1, mut t2, mut t3) = (v[7], v[5], v[3], v[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;

    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// Dequantise and inverse-transform one block exactly as libjpeg's `jpeg_idct_islow`, then
/// level-shift by 2^(P-1) and clamp to `0..2^P` through libjpeg's range-limit table.
fn idct_islow(coefs: &[i16; 64], quant: &[u16; 64], precision: u8, out: &mut [u16; 64]) {
    // libjpeg loses a bit of precision in pass 1 for 12-bit samples to avoid overflow
    let pass1_bits = if precision == 8 { 2 } else { 1 };
    // pass 1: columns into the work array (libjpeg's `int workspace[64]`)
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let v: [i64; 8] =
            std::array::from_fn(|row| i64::from(coefs[row * 8 + col]) * i64::from(quant[row * 8 + col]));
        // the all-zero-AC shortcut of libjpeg gives the same values as the full transform
        let out = idct_1d(v);
        for (row, &x) in out.iter().enumerate() {
            // (int) cast of libjpeg: truncates like C on two's complement machines
            ws[row * 8 + col] = descale(x, CONST_BITS - pass1_bits) as i32;
        }
    }
    // pass 2: rows, descaled by 8 and by the pass-1 scaling, then range-limited
    let max = (1i64 << precision) - 1;
    let center = 1i64 << (precision - 1);
    // RANGE_MASK: the table covers 4 * 2^P entries, indices wrap around outside them
    let range = 4 * (max + 1);
    for row in 0..8 {
        let v: [i64; 8] = std::array::from_fn(|col| i64::from(ws[row * 8 + col]));
        let res = idct_1d(v);
        for (col, &x) in res.iter().enumerate() {
            let masked = descale(x, CONST_BITS + pass1_bits + 3) & (range - 1);
            // libjpeg's table: [0, 2N) saturates high, [2N, 4N) is negative and saturates low
            let signed = if masked >= range / 2 {
                masked - range
            } else {
                masked
            };
            out[row * 8 + col] = (signed + center).clamp(0, max) as u16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: (u32, u32) = (4096, 4096);

    /// Bit writer for the test encoder, with 0xFF stuffing.
    struct BitWriter {
        out: Vec<u8>,
        acc: u32,
        count: u32,
    }

    impl BitWriter {
        fn put(&mut self, value: u32, n: u32) {
            for i in (0..n).rev() {
                self.acc = (self.acc << 1) | ((value >> i) & 1);
                self.count += 1;
                if self.count == 8 {
                    let b = self.acc as u8;
                    self.out.push(b);
                    if b == 0xFF {
                        self.out.push(0);
                    }
                    self.acc = 0;
                    self.count = 0;
                }
            }
        }

        /// Pad the last byte with 1 bits.
        fn flush(&mut self) {
            while self.count != 0 {
                self.put(1, 1);
            }
        }
    }

    /// Magnitude category and the bits that encode `v`.
    fn category(v: i32) -> (u32, u32) {
        let size = 32 - v.unsigned_abs().leading_zeros();
        let bits = if v < 0 {
            (v - 1) as u32 & ((1 << size) - 1)
        } else {
            v as u32
        };
        (size, bits)
    }

    /// Encoder options: precision, 16-bit quantisation table, restart interval, SOF marker.
    #[derive(Clone, Copy)]
    struct Options {
        precision: u8,
        dqt16: bool,
        restart: u16,
        sof: u8,
    }

    /// 12-bit SOF1 with 8-bit quantisation tables and no restart interval: what the tests vary.
    const TWELVE: Options = Options {
        precision: 12,
        dqt16: false,
        restart: 0,
        sof: 0xC1,
    };

    /// A minimal sequential-DCT encoder for tests: float forward DCT, quantisation by `q`,
    /// and "flat" Huffman tables (every DC category coded in 5 bits, every AC symbol in 8),
    /// which cover 12-bit data. Returns the stream and the quantised coefficients per block.
    fn encode(
        width: usize,
        height: usize,
        pixels: &[u16],
        q: &[u16; 64],
        o: &Options,
    ) -> (Vec<u8>, Vec<[i32; 64]>) {
        let mut out = vec![0xFF, 0xD8];
        let segment = |out: &mut Vec<u8>, marker: u8, payload: &[u8]| {
            out.extend([0xFF, marker]);
            out.extend(((payload.len() + 2) as u16).to_be_bytes());
            out.extend(payload);
        };
        segment(&mut out, 0xFE, b"test encoder");
        // DQT in zig-zag order
        let mut dqt = vec![if o.dqt16 { 0x10 } else { 0x00 }];
        for &n in &ZIGZAG {
            if o.dqt16 {
                dqt.extend(q[n].to_be_bytes());
            } else {
                dqt.push(q[n] as u8);
            }
        }
        segment(&mut out, 0xDB, &dqt);
        let (w, h) = (width as u16, height as u16);
        let mut sof = vec![o.precision];
        sof.extend(h.to_be_bytes());
        sof.extend(w.to_be_bytes());
        sof.extend([1, 7, 0x22, 0]); // component 7, 2x2 sampling (1x1 in effect), table 0
        segment(&mut out, o.sof, &sof);
        // DC: categories 0..=15 with 5-bit codes; AC: EOB, ZRL and run/size 1..=14, 8-bit codes
        let dc_symbols: Vec<u8> = (0..16).collect();
        let mut ac_symbols = vec![0x00, 0xF0];
        for run in 0..16u8 {
            for size in 1..=14u8 {
                ac_symbols.push(run << 4 | size);
            }
        }
        let table = |class_id: u8, len: usize, symbols: &[u8]| {
            let mut t = vec![class_id];
            t.extend((1..=16).map(|l| if l == len { symbols.len() as u8 } else { 0 }));
            t.extend(symbols);
            t
        };
        let mut dht = table(0x01, 5, &dc_symbols);
        dht.extend(table(0x13, 8, &ac_symbols));
        segment(&mut out, 0xC4, &dht);
        let ac_code = |sym: u8| ac_symbols.iter().position(|&s| s == sym).unwrap() as u32;
        if o.restart > 0 {
            segment(&mut out, 0xDD, &o.restart.to_be_bytes());
        }
        segment(&mut out, 0xDA, &[1, 7, 0x13, 0, 63, 0]);

        let center = f64::from(1u32 << (o.precision - 1));
        let (bx, by) = (width.div_ceil(8), height.div_ceil(8));
        let mut blocks = Vec::new();
        let mut bits = BitWriter {
            out: Vec::new(),
            acc: 0,
            count: 0,
        };
        let mut pred = 0;
        for mcu in 0..bx * by {
            if o.restart > 0 && mcu > 0 && mcu % usize::from(o.restart) == 0 {
                bits.flush();
                let n = ((mcu / usize::from(o.restart) - 1) & 7) as u8;
                bits.out.extend([0xFF, 0xD0 + n]);
                pred = 0;
            }
            let (x0, y0) = ((mcu % bx) * 8, (mcu / bx) * 8);
            // edge blocks repeat the last row/column, as encoders do
            let px = |x: usize, y: usize| {
                f64::from(pixels[(y0 + y).min(height - 1) * width + (x0 + x).min(width - 1)])
            };
            let mut coef = [0i32; 64];
            for v in 0..8 {
                for u in 0..8 {
                    let c = |k: usize| {
                        if k == 0 {
                            std::f64::consts::FRAC_1_SQRT_2
                        } else {
                            1.0
                        }
                    };
                    let mut s = 0.0;
                    for y in 0..8 {
                        for x in 0..8 {
                            s += (px(x, y) - center)
                                * (((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI) / 16.0).cos()
                                * (((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI) / 16.0).cos();
                        }
                    }
                    let f = 0.25 * c(u) * c(v) * s;
                    coef[v * 8 + u] = (f / f64::from(q[v * 8 + u])).round() as i32;
                }
            }
            let (size, b) = category(coef[0] - pred);
            pred = coef[0];
            bits.put(size, 5);
            bits.put(b, size);
            let mut run = 0;
            for &n in &ZIGZAG[1..] {
                if coef[n] == 0 {
                    run += 1;
                    continue;
                }
                while run >= 16 {
                    bits.put(ac_code(0xF0), 8);
                    run -= 16;
                }
                let (size, b) = category(coef[n]);
                bits.put(ac_code((run as u8) << 4 | size as u8), 8);
                bits.put(b, size);
                run = 0;
            }
            if run > 0 {
                bits.put(ac_code(0x00), 8);
            }
            blocks.push(coef);
        }
        bits.flush();
        out.extend(bits.out);
        out.extend([0xFF, 0xD9]);
        (out, blocks)
    }

    /// The exact (floating-point) inverse DCT of dequantised coefficients, level-shifted.
    fn float_idct(coef: &[i32; 64], q: &[u16; 64], precision: u8) -> [f64; 64] {
        let center = f64::from(1u32 << (precision - 1));
        let mut out = [0.0; 64];
        for y in 0..8 {
            for x in 0..8 {
                let mut s = 0.0;
                for v in 0..8 {
                    for u in 0..8 {
                        let c = |k: usize| {
                            if k == 0 {
                                std::f64::consts::FRAC_1_SQRT_2
                            } else {
                                1.0
                            }
                        };
                        s += c(u)
                            * c(v)
                            * f64::from(coef[v * 8 + u] * i32::from(q[v * 8 + u]))
                            * (((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI) / 16.0).cos()
                            * (((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI) / 16.0).cos();
                    }
                }
                out[y * 8 + x] = (0.25 * s + center).clamp(0.0, f64::from((1u32 << precision) - 1));
            }
        }
        out
    }

    /// A smooth CT-like test image with an edge, in `0..2^precision`.
    fn image(width: usize, height: usize, precision: u8) -> Vec<u16> {
        let max = f64::from((1u32 << precision) - 1);
        (0..width * height)
            .map(|i| {
                let (x, y) = ((i % width) as f64, (i / width) as f64);
                let v = 0.5 + 0.3 * (x / 5.0).sin() * (y / 7.0).cos() + if x > y { 0.15 } else { -0.2 };
                (v * max).round().clamp(0.0, max) as u16
            })
            .collect()
    }

    /// Encode, decode and compare every sample with the exact IDCT of the same coefficients:
    /// islow is within one level of it (IEEE 1180 accuracy).
    fn round_trip(width: usize, height: usize, q: &[u16; 64], o: &Options) -> Decoded {
        let pixels = image(width, height, o.precision);
        let (stream, blocks) = encode(width, height, &pixels, q, o);
        let d = decode(&stream, BIG).expect("decodes");
        assert_eq!(
            (d.width, d.height, d.precision),
            (width as u32, height as u32, o.precision)
        );
        assert_eq!(d.samples.len(), width * height);
        let bx = width.div_ceil(8);
        let mut worst = 0.0f64;
        for (b, coef) in blocks.iter().enumerate() {
            let exact = float_idct(coef, q, o.precision);
            let (x0, y0) = ((b % bx) * 8, (b / bx) * 8);
            for y in y0..height.min(y0 + 8) {
                for x in x0..width.min(x0 + 8) {
                    let got = f64::from(d.samples[y * width + x]);
                    worst = worst.max((got - exact[(y - y0) * 8 + x - x0]).abs());
                }
            }
        }
        assert!(worst <= 1.0, "islow differs from the exact IDCT by {worst}");
        // and the decoded image is close to the source (quantisation error only)
        let err = pixels
            .iter()
            .zip(&d.samples)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
            .fold(0.0, f64::max);
        assert!(err < f64::from(1u32 << o.precision) * 0.05, "max error {err}");
        d
    }

    fn flat_q(v: u16) -> [u16; 64] {
        std::array::from_fn(|i| v + (i as u16 % 8) + (i as u16 / 8))
    }

    #[test]
    fn twelve_bit_round_trip_with_odd_size() {
        let o = TWELVE;
        round_trip(21, 13, &flat_q(4), &o);
    }

    #[test]
    fn eight_bit_baseline_and_sixteen_bit_quant_tables() {
        let o8 = Options {
            precision: 8,
            dqt16: false,
            restart: 0,
            sof: 0xC0,
        };
        round_trip(16, 9, &flat_q(2), &o8);
        let o12 = Options {
            dqt16: true,
            ..TWELVE
        };
        round_trip(17, 8, &std::array::from_fn(|i| 30 + i as u16 * 5), &o12);
    }

    #[test]
    fn restart_intervals_reset_prediction() {
        // 5x3 blocks with a restart every 2 MCUs: RST0..RST6 (more than 8 wraps modulo 8)
        let mut o = Options { restart: 2, ..TWELVE };
        round_trip(40, 24, &flat_q(3), &o);
        o.restart = 1;
        let d = round_trip(80, 16, &flat_q(3), &o); // 20 MCUs: RST0-7 wrap twice
        // a wrong restart number is refused
        let pixels = image(80, 16, 12);
        let (mut stream, _) = encode(80, 16, &pixels, &flat_q(3), &o);
        let first_rst = stream.windows(2).position(|w| w == [0xFF, 0xD0]).expect("RST0");
        stream[first_rst + 1] = 0xD1;
        let e = decode(&stream, BIG).expect_err("wrong RST");
        assert_eq!(e, JpegError::Corrupt("expected RST0, found marker 0xFFD1".into()));
        // without the DRI segment the restart marker stops the scan: truncated
        let (stream, _) = encode(80, 16, &pixels, &flat_q(3), &o);
        let dri = stream.windows(2).position(|w| w == [0xFF, 0xDD]).expect("DRI");
        let no_dri = [&stream[..dri], &stream[dri + 6..]].concat();
        assert!(matches!(decode(&no_dri, BIG), Err(JpegError::Corrupt(_))));
        assert_eq!(d.samples.len(), 80 * 16);
    }

    #[test]
    fn truncated_stream_is_an_error_at_every_length() {
        let o = Options { restart: 3, ..TWELVE };
        let pixels = image(24, 24, 12);
        let (stream, _) = encode(24, 24, &pixels, &flat_q(3), &o);
        assert!(decode(&stream, BIG).is_ok());
        // cut before the EOI: every prefix that loses entropy-coded bits is refused
        let eoi = stream.len() - 2;
        for len in 0..eoi {
            assert!(
                decode(&stream[..len], BIG).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        // the EOI itself is optional (libjpeg inserts a missing one)
        assert!(decode(&stream[..eoi], BIG).is_ok());
    }

    #[test]
    fn unsupported_frames_are_refused_by_name() {
        let o = Options { sof: 0xC2, ..TWELVE };
        let pixels = image(8, 8, 12);
        let sof_error = |marker: u8| {
            let (stream, _) = encode(8, 8, &pixels, &flat_q(3), &Options { sof: marker, ..o });
            decode(&stream, BIG).expect_err("refused").to_string()
        };
        assert_eq!(sof_error(0xC2), "unsupported JPEG: progressive DCT (SOF2)");
        assert_eq!(sof_error(0xC3), "unsupported JPEG: lossless (SOF3)");
        assert_eq!(sof_error(0xC9), "unsupported JPEG: arithmetic coding (SOF9)");
        assert_eq!(sof_error(0xF7), "unsupported JPEG: JPEG-LS");
        // three components
        let (mut stream, _) = encode(8, 8, &pixels, &flat_q(3), &Options { sof: 0xC1, ..o });
        let sof = stream.windows(2).position(|w| w == [0xFF, 0xC1]).expect("SOF1");
        stream[sof + 9] = 3;
        assert_eq!(
            decode(&stream, BIG).expect_err("colour").to_string(),
            "unsupported JPEG: 3 components (only greyscale is supported)"
        );
        // 16-bit precision
        stream[sof + 9] = 1;
        stream[sof + 4] = 16;
        assert!(matches!(decode(&stream, BIG), Err(JpegError::Unsupported(_))));
        // too large for the caller's limit, refused before allocating
        stream[sof + 4] = 12;
        let e = decode(&stream, (4, 8)).expect_err("limit");
        assert_eq!(
            e.to_string(),
            "corrupt JPEG: frame size 8x8 exceeds the limit 4x8"
        );
    }

    #[test]
    fn random_garbage_is_refused_without_panicking() {
        // xorshift: deterministic garbage, with and without a valid SOI and headers in front
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let o = Options { restart: 2, ..TWELVE };
        let pixels = image(32, 16, 12);
        let (valid, _) = encode(32, 16, &pixels, &flat_q(3), &o);
        let header = valid.windows(2).position(|w| w == [0xFF, 0xDA]).expect("SOS") + 10;
        for round in 0..2000 {
            let len = (next() % 300) as usize;
            let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(decode(&garbage, BIG).is_err());
            let mut with_soi = vec![0xFF, 0xD8];
            with_soi.extend(&garbage);
            assert!(decode(&with_soi, BIG).is_err());
            // valid headers, random entropy-coded data: may decode or fail, never panic
            let mut scan = valid[..header].to_vec();
            scan.extend(&garbage);
            let _ = decode(&scan, BIG);
            // flip random bytes of the valid stream
            let mut flipped = valid.clone();
            for _ in 0..1 + round % 4 {
                let i = (next() as usize) % flipped.len();
                flipped[i] = next() as u8;
            }
            if let Ok(d) = decode(&flipped, BIG) {
                assert_eq!(d.samples.len(), d.width as usize * d.height as usize);
            }
        }
    }

    #[test]
    fn idct_dc_only_is_exact_and_extremes_saturate() {
        // a DC-only block is exact; a saturated block clamps through the range-limit table
        let q = [1u16; 64];
        let mut coefs = [0i16; 64];
        let mut out = [0u16; 64];
        coefs[0] = 8 * 100;
        idct_islow(&coefs, &q, 12, &mut out);
        assert!(out.iter().all(|&v| v == 2048 + 100));
        coefs[0] = i16::MAX;
        idct_islow(&coefs, &q, 12, &mut out);
        assert!(out.iter().all(|&v| v == 4095));
        coefs[0] = -4000;
        idct_islow(&coefs, &q, 8, &mut out);
        assert!(out.iter().all(|&v| v == 0));
        // the largest products do not overflow
        let coefs = [i16::MIN; 64];
        idct_islow(&coefs, &[u16::MAX; 64], 12, &mut out);
    }
}
