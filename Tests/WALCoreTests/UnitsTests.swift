import Testing

@testable import WALCore

/// Sizes and durations as every option and configuration key reads them.
@Suite struct UnitsTests {
    @Test func sizesWithAndWithoutSuffixes() throws {
        let cases: [(String, UInt64)] = [
            ("0", 0), ("512", 512), ("64k", 64 << 10), ("64K", 64 << 10), ("512M", 512 << 20), ("512m", 512 << 20),
            ("10G", 10 << 30), ("1T", 1 << 40), ("1.5G", 3 << 29), ("0.5k", 512), ("8388607T", 8_388_607 << 40),
            ("9223372036854775807", UInt64(Int64.max)),
        ]
        for (text, bytes) in cases { #expect(try ByteSize(parsing: text).bytes == bytes, "\(text)") }
        #expect(try ByteSize(parsing: "512", plainUnit: 1 << 20).bytes == 512 << 20)
        #expect(try ByteSize(parsing: "2G", plainUnit: 1 << 20).bytes == 2 << 30)
    }

    @Test func badSizesSayWhyAndTheNearestValidForm() {
        let cases: [(String, String)] = [
            ("10GB", "did you mean 10G?"), ("10 GiB", "did you mean 10G?"), ("10gb", "did you mean 10G?"),
            ("512 MB", "did you mean 512M?"), ("1024B", "did you mean 1024?"), ("-5", "cannot be negative"),
            ("", "not a size"), ("G", "not a size"), ("1e9", "not a size"), ("ten", "not a size"), ("1.G", "not a size"),
            ("inf", "not a size"), ("10P", "not a size"), ("8388608T", "too large"),
            ("99999999999999999999", "too large"), ("9223372036854775808", "too large"),
        ]
        for (text, expected) in cases {
            #expect(throws: UnitError.self, "\(text)") { try ByteSize(parsing: text) }
            do {
                _ = try ByteSize(parsing: text)
            } catch {
                #expect("\(error)".contains(expected), "\(text): \(error)")
                #expect("\(error)".contains("a plain number is bytes; k, M, G and T are powers of 1024"), "\(text): \(error)")
            }
        }
    }

    @Test func durationsWithAndWithoutSuffixes() throws {
        let cases: [(String, Double)] = [
            ("0", 0), ("30", 30), ("0.5", 0.5), ("30s", 30), ("500ms", 0.5), ("5m", 300), ("2h", 7200), ("1d", 86_400),
            ("1h30m", 5400), ("2m30s", 150), ("1.5h", 5400), ("1d12h", 129_600),
        ]
        for (text, seconds) in cases { #expect(try TimeSpan(parsing: text).seconds == seconds, "\(text)") }
        #expect(try TimeSpan(parsing: "30", plainUnit: 86_400).seconds == 30 * 86_400)
        #expect(try TimeSpan(parsing: "12h", plainUnit: 86_400).seconds == 12 * 3600)
    }

    @Test func badDurationsSayWhyAndTheNearestValidForm() {
        let cases: [(String, String)] = [
            ("5 min", "did you mean 5m?"), ("5mins", "did you mean 5m?"), ("2 hours", "did you mean 2h?"),
            ("5M", "did you mean 5m?"), ("30S", "did you mean 30s?"), ("1day", "did you mean 1d?"),
            ("2w", "did you mean 14d?"), ("-5s", "cannot be negative"), ("", "not a duration"), ("s", "not a duration"),
            ("5x", "not a duration"), ("30m1h", "not a duration"), ("5s5s", "not a duration"), ("nan", "not a duration"),
            ("1e3", "not a duration"), ("99999999999d", "too long"),
        ]
        for (text, expected) in cases {
            #expect(throws: UnitError.self, "\(text)") { try TimeSpan(parsing: text) }
            do {
                _ = try TimeSpan(parsing: text)
            } catch {
                #expect("\(error)".contains(expected), "\(text): \(error)")
                #expect(
                    "\(error)".contains("a plain number is seconds; or use ms, s, m, h or d, e.g. 30s, 5m, 2h, 1d"),
                    "\(text): \(error)")
            }
        }
    }

    @Test func errorsSayWhatAPlainNumberCounts() {
        #expect(throws: UnitError.self) { try ByteSize(parsing: "3Q", plainUnit: 1 << 20) }
        do { _ = try ByteSize(parsing: "3Q", plainUnit: 1 << 20) } catch { #expect("\(error)".contains("a plain number is MiB")) }
        do { _ = try TimeSpan(parsing: "3Q", plainUnit: 86_400) } catch { #expect("\(error)".contains("a plain number is days")) }
    }

    @Test func descriptionsAreTheShortestExactForm() throws {
        #expect(ByteSize(bytes: 64 << 20).description == "64M")
        #expect(ByteSize(bytes: 1 << 30).description == "1G")
        #expect(ByteSize(bytes: 3 << 10).description == "3k")
        #expect(ByteSize(bytes: 1000).description == "1000")
        #expect(TimeSpan(seconds: 0).description == "0s")
        #expect(TimeSpan(seconds: 30).description == "30s")
        #expect(TimeSpan(seconds: 90).description == "90s")
        #expect(TimeSpan(seconds: 300).description == "5m")
        #expect(TimeSpan(seconds: 86_400).description == "1d")
        #expect(TimeSpan(seconds: 0.5).description == "500ms")
        // What is printed parses back to the same value.
        for text in ["64M", "1G", "3k", "1000"] { #expect(try ByteSize(parsing: text).description == text) }
        for text in ["30s", "90s", "5m", "1d", "500ms"] { #expect(try TimeSpan(parsing: text).description == text) }
    }

    @Test func wholeSecondsAndDuration() throws {
        #expect(try TimeSpan(parsing: "2m").isWholeSeconds)
        #expect(try !TimeSpan(parsing: "1500ms").isWholeSeconds)
        #expect(try TimeSpan(parsing: "1500ms").duration == .milliseconds(1500))
    }
}
