import LZ4Codec
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// Checks a stored backup's archive against the size and CRC-32C recorded when it was stored, so a damaged
/// archive is found before anything is unpacked or started from it.
public enum BackupVerification {
    /// The archive's uncompressed bytes, read one piece at a time: a backup may be far larger than memory.
    static let pieceBytes = 1 << 20
    /// An LZ4 frame ends with a 4-byte end mark and the 4-byte checksum of its content.
    static let frameTailBytes = 8

    /// Throws a `.corrupt` SpoolError naming the archive, the recorded CRC-32C and what was found instead.
    public static func verify(_ info: BackupInfo, systemDirectory: String) throws {
        let path = systemDirectory + "/base/" + info.id + "/base.tar.lz4"
        guard let expected = UInt32(info.archiveCRC32C, radix: 16) else {
            throw SpoolError(
                .corrupt, "backup \(info.id) is damaged: its record holds no valid CRC-32C (\"\(info.archiveCRC32C)\")")
        }
        let expectation = "expected CRC-32C \(info.archiveCRC32C) over \(info.archiveBytes) bytes"
        let fd = try FileIO.open(path, O_RDONLY)
        defer { FileIO.close(fd) }
        let fileBytes = try FileIO.fileSize(fd, path: path)
        let reader: LZ4.FrameReader
        do { reader = try LZ4.FrameReader() } catch {
            throw SpoolError(.io, "cannot check backup \(info.id): \(error)")
        }
        var crc: UInt32 = 0
        var contentBytes: UInt64 = 0
        var input: [UInt8] = []
        var readBytes = 0
        var stalled = false
        var output: [UInt8] = []
        output.reserveCapacity(pieceBytes)
        while !reader.finished {
            if input.isEmpty || stalled {
                let more = try FileIO.preadAll(fd, count: pieceBytes, at: readBytes, path: path)
                if more.isEmpty {
                    throw SpoolError(
                        .corrupt,
                        "backup \(info.id) is damaged: \(path) ends inside its LZ4 frame after \(contentBytes) bytes of content; \(expectation)"
                    )
                }
                readBytes += more.count
                input += more
            }
            output.removeAll(keepingCapacity: true)
            // The frame's end mark and content checksum go in on their own, after all content came out: when only
            // that checksum fails, the whole content has been read and its CRC-32C can be named.
            let beforeTail = fileBytes - frameTailBytes - (readBytes - input.count)
            let offered = beforeTail > 0 ? min(input.count, beforeTail) : input.count
            let consumed: Int
            do {
                consumed = try input.withUnsafeBytes {
                    try reader.read(UnsafeRawBufferPointer(rebasing: $0[0..<offered]), into: &output, maxOutput: pieceBytes)
                }
            } catch {
                let found =
                    contentBytes == info.archiveBytes
                    ? "holds an archive with CRC-32C \(String(crc, radix: 16)) over \(contentBytes) bytes, and its LZ4 frame fails its own check (\(error))"
                    : "cannot be decompressed after \(contentBytes) bytes of content (\(error))"
                throw SpoolError(.corrupt, "backup \(info.id) is damaged: \(path) \(found); \(expectation)")
            }
            output.withUnsafeBytes { crc = CRC32C.update(crc, $0) }
            contentBytes += UInt64(output.count)
            input.removeFirst(consumed)
            // The decoder wants more than the input left holds.
            stalled = consumed == 0 && output.isEmpty
        }
        let trailing = fileBytes - (readBytes - input.count)
        guard trailing == 0 else {
            throw SpoolError(
                .corrupt, "backup \(info.id) is damaged: \(path) has \(trailing) bytes after its LZ4 frame; \(expectation)")
        }
        guard crc == expected, contentBytes == info.archiveBytes else {
            throw SpoolError(
                .corrupt,
                "backup \(info.id) is damaged: \(path) holds an archive with CRC-32C \(String(crc, radix: 16)) over \(contentBytes) bytes; \(expectation)"
            )
        }
    }
}
