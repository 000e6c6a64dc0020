//! The network edge: finding peers (DNS SRV), connecting to them, and TLS.

pub mod certs;
pub mod dial;
pub mod resolve;
pub mod tls;
pub mod tls_io;

/// The least a connection's I/O buffer (its output, TLS ciphertext out, TLS plaintext in)
/// takes: see [`io_capacity`].
pub const IO_BUFFER_MIN: usize = 1024;

/// The capacity for an I/O buffer that must hold `needed` bytes: a power of two, at least
/// [`IO_BUFFER_MIN`].
///
/// These buffers live while a stream is busy and are given back when it goes quiet. Sized
/// by whatever first filled them (output doubled from a 258-byte stream header: 516; a
/// 560-byte record), they took the jemalloc size classes of state every stream keeps for
/// life (640 bytes: rustls's record keys and deframer, the table entry; 224, 448), and,
/// freed by the idle trim after later streams had set up around them, left holes pinning
/// those slabs: ~2.5 KiB per idle pair. The classes of 1, 2, 4 KiB… hold only buffers a
/// quiet stream gives back (the read buffers are 2 and 4 KiB), so their pages come back
/// whole. No allocation more per write: a busy stream keeps its buffers as before.
pub fn io_capacity(needed: usize) -> usize {
    needed.max(IO_BUFFER_MIN).next_power_of_two()
}

/// Room for `needed` bytes in all in an I/O buffer, taken as [`io_capacity`] says.
pub fn reserve_io(buf: &mut Vec<u8>, needed: usize) {
    if buf.capacity() < needed {
        buf.reserve_exact(io_capacity(needed) - buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_buffers_take_powers_of_two_from_a_kib() {
        assert_eq!([0, 1, 516, 1024, 1025, 2049, 70_000].map(io_capacity), [1024, 1024, 1024, 1024, 2048, 4096, 131_072]);
        let mut buf = b"header".to_vec();
        reserve_io(&mut buf, 6 + 560);
        assert_eq!((buf.capacity(), &buf[..]), (1024, &b"header"[..]));
        reserve_io(&mut buf, 1000);
        assert_eq!(buf.capacity(), 1024, "room enough: unchanged");
    }
}
