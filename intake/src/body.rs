//! Request bodies: the one gunzip, capped.

use std::io::Read;

use crate::Error;

/// Inflate `compressed` (one gzip member or several, concatenated, as RFC
/// 1952 allows), never producing more than `max` bytes: a small gzip bomb
/// cannot allocate past the limit.
pub fn gunzip(compressed: &[u8], max: usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(compressed)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadGzip(e.to_string()))?;
    if out.len() > max {
        return Err(Error::BodyTooLarge(max));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn inflates_one_member_and_several() {
        assert_eq!(gunzip(&gzip(b"[1,2]"), 100).unwrap(), b"[1,2]");
        let mut two = gzip(b"[1,");
        two.extend(gzip(b"2]"));
        assert_eq!(gunzip(&two, 100).unwrap(), b"[1,2]");
    }

    #[test]
    fn stops_at_the_cap() {
        let bomb = gzip(&vec![b' '; 10 << 20]);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        assert_eq!(gunzip(&bomb, 1 << 20), Err(Error::BodyTooLarge(1 << 20)));
        assert_eq!(gunzip(&gzip(b"12345"), 5).unwrap(), b"12345");
        assert_eq!(gunzip(&gzip(b"123456"), 5), Err(Error::BodyTooLarge(5)));
    }

    #[test]
    fn refuses_what_is_not_gzip() {
        assert!(matches!(gunzip(b"not gzip", 100), Err(Error::BadGzip(_))));
        let mut truncated = gzip(b"[1,2,3,4,5,6,7,8]");
        truncated.truncate(truncated.len() - 6);
        assert!(matches!(gunzip(&truncated, 100), Err(Error::BadGzip(_))));
    }
}
