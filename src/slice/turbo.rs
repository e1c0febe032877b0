//! JPEG decoding by libjpeg-turbo, the library PIL (and through it pydicom) and DCMTK's
//! codecs are built on, so slices decode to their pixels exactly: islow IDCT, fancy (smooth)
//! chroma upsampling, libjpeg's colour conversion. Reached through its TurboJPEG 3 API from
//! the `turbojpeg-sys` crate, which builds the vendored libjpeg-turbo from source with cmake
//! (with SIMD when nasm is installed; the SIMD kernels give the same pixels as the C ones).
//!
//! The header is always read first ([`Jpeg::open`]) so the caller can check the declared size
//! and precision against its limits before anything the size of the image is allocated; the
//! decoder also refuses more pixels than [`Jpeg::open`] was allowed and progressive files
//! with an absurd number of scans. libjpeg reports errors through longjmp inside the C
//! library, never by unwinding through Rust; every error becomes a [`JpegError`].

use std::ffi::CStr;

use turbojpeg_sys as tj;

/// Progressive scans beyond this are a forged file (libjpeg-turbo's own advice; real files
/// have about ten).
const SCAN_LIMIT: i32 = 500;

/// Why a JPEG stream was not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum JpegError {
    /// A valid stream this reader does not decode (precision, colour layout).
    Unsupported(String),
    /// A broken or forged stream.
    Corrupt(String),
}

/// The colour space libjpeg infers from the markers (JFIF, Adobe, component ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ColorSpace {
    Rgb,
    YCbCr,
    Gray,
    Cmyk,
    Ycck,
}

/// What the frame header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub width: u32,
    pub height: u32,
    /// Bits per sample: 8 or 12 for DCT, 2 to 16 for lossless.
    pub precision: u32,
    pub lossless: bool,
    pub color: ColorSpace,
}

/// A TurboJPEG decompressor holding one stream whose header has been read.
pub(super) struct Jpeg<'a> {
    handle: tj::tjhandle,
    bytes: &'a [u8],
    pub header: Header,
}

impl Drop for Jpeg<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once
        unsafe { tj::tj3Destroy(self.handle) }
    }
}

impl<'a> Jpeg<'a> {
    /// Read the header of `bytes`; decoding will refuse images of more than `max_pixels`.
    pub fn open(bytes: &'a [u8], max_pixels: u64) -> Result<Self, JpegError> {
        // SAFETY: tj3Init has no preconditions; a null handle is checked
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
        if handle.is_null() {
            return Err(JpegError::Corrupt("cannot start the JPEG decoder".into()));
        }
        let mut jpeg = Jpeg {
            handle,
            bytes,
            header: Header {
                width: 0,
                height: 0,
                precision: 0,
                lossless: false,
                color: ColorSpace::Gray,
            },
        };
        jpeg.set(tj::TJPARAM_TJPARAM_SCANLIMIT, SCAN_LIMIT);
        jpeg.set(
            tj::TJPARAM_TJPARAM_MAXPIXELS,
            i32::try_from(max_pixels).unwrap_or(i32::MAX),
        );
        // SAFETY: the pointer and length describe `bytes`, which outlives the handle
        let rc = unsafe { tj::tj3DecompressHeader(handle, bytes.as_ptr(), bytes.len() as _) };
        if rc != 0 {
            return Err(JpegError::Corrupt(jpeg.error()));
        }
        let (width, height) = (
            jpeg.get(tj::TJPARAM_TJPARAM_JPEGWIDTH),
            jpeg.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        if width <= 0 || height <= 0 {
            return Err(JpegError::Corrupt(format!(
                "no image in the stream ({width}x{height})"
            )));
        }
        let color = match jpeg.get(tj::TJPARAM_TJPARAM_COLORSPACE) as tj::TJCS {
            tj::TJCS_TJCS_RGB => ColorSpace::Rgb,
            tj::TJCS_TJCS_YCbCr => ColorSpace::YCbCr,
            tj::TJCS_TJCS_GRAY => ColorSpace::Gray,
            tj::TJCS_TJCS_CMYK => ColorSpace::Cmyk,
            tj::TJCS_TJCS_YCCK => ColorSpace::Ycck,
            other => return Err(JpegError::Unsupported(format!("colour space {other}"))),
        };
        jpeg.header = Header {
            width: width as u32,
            height: height as u32,
            precision: jpeg.get(tj::TJPARAM_TJPARAM_PRECISION).max(0) as u32,
            lossless: jpeg.get(tj::TJPARAM_TJPARAM_LOSSLESS) == 1,
            color,
        };
        Ok(jpeg)
    }

    fn set(&mut self, param: tj::TJPARAM, value: i32) {
        // SAFETY: a valid handle; an unknown parameter only returns -1
        unsafe { tj::tj3Set(self.handle, param as i32, value) };
    }

    fn get(&self, param: tj::TJPARAM) -> i32 {
        // SAFETY: a valid handle
        unsafe { tj::tj3Get(self.handle, param as i32) }
    }

    /// The last error's message.
    fn error(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated static or per-handle buffer
        let text = unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.handle)) };
        text.to_string_lossy().trim().to_string()
    }

    /// After a decompress call: `Ok` when it succeeded, or only warned and `strict` is off.
    /// A stream that ends early is refused even then (PIL refuses it as truncated).
    fn outcome(&self, rc: i32, strict: bool) -> Result<(), JpegError> {
        if rc == 0 {
            return Ok(());
        }
        let message = self.error();
        // SAFETY: a valid handle
        let warning = unsafe { tj::tj3GetErrorCode(self.handle) } == tj::TJERR_TJERR_WARNING as i32;
        if warning && !strict && !message.contains("Premature end of JPEG file") {
            return Ok(());
        }
        Err(JpegError::Corrupt(message))
    }

    fn samples(&self, channels: usize) -> usize {
        self.header.width as usize * self.header.height as usize * channels
    }

    /// Decode an 8-bit image to `format` (one of TurboJPEG's packed pixel formats with
    /// `channels` bytes per pixel). Corrupt-data warnings are tolerated unless `strict`.
    pub fn decode8(&self, format: tj::TJPF, channels: usize, strict: bool) -> Result<Vec<u8>, JpegError> {
        if self.header.precision > 8 {
            return Err(JpegError::Unsupported(format!(
                "{}-bit JPEG",
                self.header.precision
            )));
        }
        let mut out = vec![0u8; self.samples(channels)];
        // SAFETY: `out` holds width*height*channels samples, the size TurboJPEG writes for
        // this header at pitch 0 (no scaling or cropping is set)
        let rc = unsafe {
            tj::tj3Decompress8(
                self.handle,
                self.bytes.as_ptr(),
                self.bytes.len() as _,
                out.as_mut_ptr(),
                0,
                format,
            )
        };
        self.outcome(rc, strict)?;
        Ok(out)
    }

    /// Decode a single-component image of any precision (2 to 16 bits) to right-aligned
    /// samples, refusing every warning: what a DICOM frame needs.
    pub fn decode_grey_samples(&self) -> Result<Vec<u16>, JpegError> {
        let header = self.header;
        if header.color != ColorSpace::Gray {
            return Err(JpegError::Unsupported(format!(
                "{:?} JPEG for one sample per pixel",
                header.color
            )));
        }
        let gray = tj::TJPF_TJPF_GRAY;
        let (ptr, len) = (self.bytes.as_ptr(), self.bytes.len() as _);
        match header.precision {
            2..=8 => Ok(self
                .decode8(tj::TJPF_TJPF_GRAY, 1, true)?
                .into_iter()
                .map(u16::from)
                .collect()),
            9..=12 => {
                let mut out = vec![0i16; self.samples(1)];
                // SAFETY: `out` holds width*height samples (grey, pitch 0, no scaling)
                let rc = unsafe { tj::tj3Decompress12(self.handle, ptr, len, out.as_mut_ptr(), 0, gray) };
                self.outcome(rc, true)?;
                Ok(out.into_iter().map(|v| v as u16).collect())
            }
            13..=16 if header.lossless => {
                let mut out = vec![0u16; self.samples(1)];
                // SAFETY: as above
                let rc = unsafe { tj::tj3Decompress16(self.handle, ptr, len, out.as_mut_ptr(), 0, gray) };
                self.outcome(rc, true)?;
                Ok(out)
            }
            p => Err(JpegError::Unsupported(format!(
                "{p}-bit {} JPEG",
                if header.lossless { "lossless" } else { "DCT" }
            ))),
        }
    }
}
