import NIOCore
import Testing

@testable import Operations

@Suite struct SwitchoverControlTests {
    let request = SwitchoverControlRequest(action: .promote, shutdownCheckpoint: "0/5000028", requestedBy: "hospital")

    @Test func onlyTheNamedCertificateMayAskAndOnlyOneRequestRunsAtATime() {
        #expect(
            SwitchoverControlPolicy.refusal(certificateName: "hospital", allowed: "hospital", busy: false, request: request)
                == nil)
        let stranger = SwitchoverControlPolicy.refusal(certificateName: "dr", allowed: "hospital", busy: false, request: request)
        #expect(stranger?.contains("\"dr\" may not request a switchover here") == true, "\(stranger ?? "")")
        #expect(stranger?.contains("--control-allow") == true)
        let anonymous = SwitchoverControlPolicy.refusal(certificateName: nil, allowed: "hospital", busy: false, request: request)
        #expect(anonymous?.contains("without a name") == true)
        // A name that only starts like the allowed one is another name.
        #expect(
            SwitchoverControlPolicy.refusal(certificateName: "hospital2", allowed: "hospital", busy: false, request: request)
                != nil)
        let busy = SwitchoverControlPolicy.refusal(certificateName: "hospital", allowed: "hospital", busy: true, request: request)
        #expect(busy?.contains("another switchover request is running") == true)
        var newer = request
        newer.version = 2
        let unknown = SwitchoverControlPolicy.refusal(
            certificateName: "hospital", allowed: "hospital", busy: false, request: newer)
        #expect(unknown?.contains("version 2 is not understood") == true)
    }

    @Test func linesSplitAcrossReadsAndRoundTrip() throws {
        let encoded = try ControlLines.encode(request)
        let bytes =
            Array(encoded.readableBytesView)
            + Array(try ControlLines.encode(SwitchoverControlAnswer(progress: "stop")).readableBytesView)
        var pending = ByteBuffer()
        var lines: [ByteBuffer] = []
        // One byte at a time: every split point of both lines.
        for byte in bytes { lines += try ControlLines.lines(ByteBuffer(bytes: [byte]), pending: &pending) }
        #expect(lines.count == 2 && pending.readableBytes == 0)
        #expect(try ControlLines.decode(SwitchoverControlRequest.self, lines[0]) == request)
        let answer = try ControlLines.decode(SwitchoverControlAnswer.self, lines[1])
        #expect(answer.progress == "stop" && !answer.isFinal)
        #expect(SwitchoverControlAnswer(refused: "no").isFinal)
    }

    @Test func aLineThatNeverEndsIsRefused() {
        var pending = ByteBuffer()
        let chunk = ByteBuffer(repeating: UInt8(ascii: "x"), count: 1 << 20)
        #expect(throws: SwitchoverControlError.self) {
            for _ in 0..<5 { _ = try ControlLines.lines(chunk, pending: &pending) }
        }
    }

    @Test func malformedRequestsDoNotDecode() {
        for text in ["", "{}", "{\"action\":\"explode\",\"dryRun\":false,\"requestedBy\":\"x\",\"version\":1}", "not json"] {
            #expect(throws: (any Error).self) { try ControlLines.decode(SwitchoverControlRequest.self, ByteBuffer(string: text)) }
        }
    }
}
