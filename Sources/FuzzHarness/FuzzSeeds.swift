import NIOCore
import ShipProtocol
import WALCore

/// Well-formed inputs for each target, so the fuzzer starts from the formats' real shapes.
public enum FuzzSeeds {
    public static var all: [(FuzzTarget, [[UInt8]])] {
        [(.frames, frames), (.frontend, frontend), (.walpage, walPages)]
    }

    static var frames: [[UInt8]] {
        let messages: [ShipMessage] = [
            .hello(
                Hello(
                    role: .stream, synchronous: true, systemIdentifier: 7_000_000_000_000_000_001, timeline: 1,
                    walSegmentSize: 16 << 20, senderName: "fuzz")),
            .welcome(Welcome(resumeLSN: LSN("0/3000000")!, resumeTimeline: 1, receiverName: "dr")),
            .walData(
                WALData.make(
                    timeline: 1, startLSN: LSN("0/3000000")!, primaryEndLSN: LSN("0/3002000")!,
                    primarySendTime: PostgresTimestamp(rawValue: 1), wal: ByteBuffer(repeating: 7, count: 4096))),
            .ack(
                Ack(
                    timeline: 1, writtenLSN: LSN(200), durableLSN: LSN(100), replayedLSN: LSN(50),
                    replayTime: PostgresTimestamp(rawValue: 9), receiverTime: PostgresTimestamp(rawValue: 10))),
            .keepalive(Keepalive(primaryEndLSN: LSN(77), sendTime: PostgresTimestamp(rawValue: 5), replyRequested: true)),
            .refusal(Refusal(code: .fenced, message: "fenced")),
        ]
        let encoder = ShipFrameEncoder()
        var all = ByteBuffer()
        var each: [[UInt8]] = messages.map { message in
            var out = ByteBuffer()
            try? encoder.encode(data: message, out: &out)
            all.writeImmutableBuffer(out)
            return Array(out.readableBytesView)
        }
        each.append(Array(all.readableBytesView))
        return each
    }

    static var frontend: [[UInt8]] {
        func message(_ type: UInt8?, _ body: [UInt8]) -> [UInt8] {
            let length = withUnsafeBytes(of: UInt32(body.count + 4).bigEndian, Array.init)
            return (type.map { [$0] } ?? []) + length + body
        }
        let startup = message(
            nil,
            withUnsafeBytes(of: UInt32(196_608).bigEndian, Array.init)
                + Array("user\0postgres\0replication\0true\0application_name\0dr\0\0".utf8))
        let clientFirst = Array("n,,n=,r=abcdefghijklmnop".utf8)
        let sasl = message(
            UInt8(ascii: "p"),
            Array("SCRAM-SHA-256\0".utf8) + withUnsafeBytes(of: Int32(clientFirst.count).bigEndian, Array.init) + clientFirst)
        let saslFinal = message(
            UInt8(ascii: "p"), Array("c=biws,r=abcdefghijklmnopfuzz,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".utf8))
        let query = message(UInt8(ascii: "Q"), Array("START_REPLICATION SLOT \"dr\" PHYSICAL 0/3000000 TIMELINE 1\0".utf8))
        let copy = message(UInt8(ascii: "d"), [UInt8(ascii: "r")] + [UInt8](repeating: 0, count: 33))
        let ssl = message(nil, withUnsafeBytes(of: UInt32(80_877_103).bigEndian, Array.init))
        return [startup, sasl, startup + sasl + saslFinal + query + copy, ssl + startup, query]
    }

    static var walPages: [[UInt8]] {
        // A long page header of segment 0 on timeline 1, then a short one, as PostgreSQL 15 writes them.
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        let long =
            le(UInt16(0xD110)) + le(UInt16(0x0002)) + le(UInt32(1)) + le(UInt64(0)) + le(UInt32(0))
            + [0, 0, 0, 0] + le(UInt64(7_000_000_000_000_000_001)) + le(UInt32(16 << 20)) + le(UInt32(8192))
        let page = long + [UInt8](repeating: 0, count: 8192 - long.count)
        let short = le(UInt16(0xD110)) + le(UInt16(0)) + le(UInt32(1)) + le(UInt64(8192)) + le(UInt32(0)) + [0, 0, 0, 0]
        let second = short + [UInt8](repeating: 0, count: 8192 - short.count)
        let prefix = [UInt8](repeating: 0, count: 16)
        return [prefix + page, prefix + page + second, prefix + Array(page.prefix(40))]
    }
}
