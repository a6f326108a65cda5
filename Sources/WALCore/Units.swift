/// A number of bytes as people write it: `512`, `64k`, `512M`, `10G`, `1T`, `1.5G` (k, M, G and T are powers
/// of 1024, in either case). Every option and configuration key that takes a size reads it with this one parser.
public struct ByteSize: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var bytes: UInt64

    public init(bytes: UInt64) { self.bytes = bytes }

    /// The largest size any option takes: every consumer may hold it in an Int64.
    public static let maximum = ByteSize(bytes: UInt64(Int64.max))

    static let units: [(suffix: Character, multiplier: UInt64)] = [
        ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40),
    ]

    /// Parses `text`; a plain number counts `plainUnit` bytes each (1 for options named -bytes, 1 MiB for -mb).
    public init(parsing text: String, plainUnit: UInt64 = 1) throws {
        let badValue = { (reason: String) in
            UnitError(
                value: text, reason: reason, suggestion: ByteSize.suggestion(for: text, plainUnit: plainUnit), kind: .size,
                plainNumbers: plainUnit == 1 ? "bytes" : plainUnit == 1 << 20 ? "MiB" : "units of \(plainUnit) bytes")
        }
        var digits = Substring(text)
        var multiplier = plainUnit
        if let last = text.last?.lowercased().first, let unit = Self.units.first(where: { $0.suffix == last }) {
            digits = digits.dropLast()
            multiplier = unit.multiplier
        }
        guard let number = DecimalText(digits) else {
            throw badValue(text.hasPrefix("-") ? "a size cannot be negative" : "not a size")
        }
        guard let bytes = number.times(multiplier), bytes <= Self.maximum.bytes else {
            throw badValue("too large: the most is \(Self.maximum.bytes) bytes (8 EiB)")
        }
        self.bytes = bytes
    }

    /// The nearest valid form of a size that did not parse (`10GB`, `10 GiB` and `10gb` give `10G`), if any.
    static func suggestion(for text: String, plainUnit: UInt64) -> String? {
        var cleaned = text.filter { !$0.isWhitespace }.lowercased()
        for ending in ["ib", "b", "bytes", "byte"] where cleaned.hasSuffix(ending) && cleaned.count > ending.count {
            cleaned = String(cleaned.dropLast(ending.count))
            break
        }
        if let last = cleaned.last, let index = "kmgt".firstIndex(of: last) {
            cleaned = String(cleaned.dropLast()) + String("kMGT"[index])
        }
        guard cleaned != text, (try? ByteSize(parsing: cleaned, plainUnit: plainUnit)) != nil else { return nil }
        return cleaned
    }

    public static func < (a: ByteSize, b: ByteSize) -> Bool { a.bytes < b.bytes }

    /// The shortest exact form: `64M` for 64 MiB, `1000` for 1000 bytes.
    public var description: String {
        for (suffix, multiplier) in Self.units.reversed() where bytes >= multiplier && bytes % multiplier == 0 {
            return "\(bytes / multiplier)\(suffix == "k" ? "k" : String(suffix).uppercased())"
        }
        return String(bytes)
    }
}

/// A length of time as people write it: `30` (seconds), `30s`, `500ms`, `5m`, `2h`, `1d`, `1h30m`, `1.5h`.
/// Every option and configuration key that takes a duration reads it with this one parser, the sender's
/// `--on-receiver-loss degrade-after=DURATION` included.
public struct TimeSpan: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var seconds: Double

    public init(seconds: Double) { self.seconds = seconds }

    /// Longer than any option means (about 317 years): a typo, not a setting.
    public static let maximum = TimeSpan(seconds: 1e10)

    static let units: [(suffix: String, seconds: Double)] = [
        ("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400),
    ]

    /// Parses `text`; a plain number counts `plainUnit` seconds each (1 for options named -seconds, 86400 for -days).
    public init(parsing text: String, plainUnit: Double = 1) throws {
        let badValue = { (reason: String) in
            UnitError(
                value: text, reason: reason, suggestion: TimeSpan.suggestion(for: text, plainUnit: plainUnit),
                kind: .duration,
                plainNumbers: plainUnit == 1 ? "seconds" : plainUnit == 86_400 ? "days" : "units of \(plainUnit) s")
        }
        if text.hasPrefix("-") { throw badValue("a duration cannot be negative") }
        if let number = DecimalText(Substring(text)) {
            self.seconds = number.value * plainUnit
        } else {
            // One or more NUMBER UNIT pairs, each unit smaller than the one before: 1h30m, 2m30s.
            var rest = Substring(text)
            var total = 0.0
            var previousUnit = Double.infinity
            while !rest.isEmpty {
                let numberText = rest.prefix { $0.isNumber || $0 == "." }
                rest = rest.dropFirst(numberText.count)
                let unitText = rest.prefix { $0.isLetter }
                rest = rest.dropFirst(unitText.count)
                guard let number = DecimalText(numberText),
                    let unit = Self.units.first(where: { $0.suffix == String(unitText) }), unit.seconds < previousUnit
                else { throw badValue("not a duration") }
                total += number.value * unit.seconds
                previousUnit = unit.seconds
            }
            guard !text.isEmpty else { throw badValue("not a duration") }
            self.seconds = total
        }
        guard seconds <= Self.maximum.seconds else { throw badValue("too long: the most is 100 years") }
    }

    /// The nearest valid form of a duration that did not parse (`5 min` and `5mins` give `5m`, `2 hours` gives
    /// `2h`, `5M` gives `5m`), if any.
    static func suggestion(for text: String, plainUnit: Double) -> String? {
        let cleaned = text.filter { !$0.isWhitespace }.lowercased()
        let words: [(String, String)] = [
            ("milliseconds", "ms"), ("millisecond", "ms"), ("msecs", "ms"), ("msec", "ms"),
            ("seconds", "s"), ("second", "s"), ("secs", "s"), ("sec", "s"),
            ("minutes", "m"), ("minute", "m"), ("mins", "m"), ("min", "m"),
            ("hours", "h"), ("hour", "h"), ("hrs", "h"), ("hr", "h"), ("days", "d"), ("day", "d"),
        ]
        var candidate = cleaned
        for (word, unit) in words {
            candidate = candidate.replacing(word, with: unit)
        }
        for (word, days) in [("weeks", 7), ("week", 7), ("w", 7)] where candidate.hasSuffix(word) {
            if let count = Int(candidate.dropLast(word.count)) { candidate = "\(count * days)d" }
            break
        }
        guard candidate != text, (try? TimeSpan(parsing: candidate, plainUnit: plainUnit)) != nil else { return nil }
        return candidate
    }

    public var duration: Duration { .milliseconds(Int64((seconds * 1000).rounded())) }

    /// Whether the span is a whole number of seconds (options that time whole-second loops need one).
    public var isWholeSeconds: Bool { seconds == seconds.rounded() }

    public static func < (a: TimeSpan, b: TimeSpan) -> Bool { a.seconds < b.seconds }

    /// The shortest exact form: `1d`, `2h`, `5m`, `30s`, `500ms`.
    public var description: String {
        if seconds == 0 { return "0s" }
        for (suffix, unit) in Self.units.reversed() where seconds >= unit || unit == 0.001 {
            let count = seconds / unit
            if count == count.rounded() { return "\(Int(count))\(suffix)" }
        }
        return "\(seconds)s"
    }
}

/// A size or duration that does not parse: what was given, why it was refused, and the nearest valid form.
public struct UnitError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable {
        case size
        case duration
    }

    public let value: String
    public let reason: String
    public let suggestion: String?
    public let kind: Kind
    /// What a number without a unit counts: bytes, MiB, seconds, days.
    public let plainNumbers: String

    public var description: String {
        let examples =
            switch kind {
            case .size: "a plain number is \(plainNumbers); k, M, G and T are powers of 1024, e.g. 512M, 10G"
            case .duration: "a plain number is \(plainNumbers); or use ms, s, m, h or d, e.g. 30s, 5m, 2h, 1d"
            }
        let nearest = suggestion.map { "did you mean \($0)? " } ?? ""
        return "\(reason) (hint: \(nearest)\(examples))"
    }
}

/// Digits with an optional decimal point and fraction, and nothing else: no sign, exponent, `inf` or `nan`.
struct DecimalText {
    let wholeDigits: Substring
    let fraction: Substring

    init?(_ text: Substring) {
        let parts = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let first = parts.first, !first.isEmpty, first.allSatisfy(\.isASCIIDigit) else { return nil }
        let fraction = parts.count == 2 ? parts[1] : ""
        guard parts.count == 1 || (!fraction.isEmpty && fraction.allSatisfy(\.isASCIIDigit)) else { return nil }
        self.wholeDigits = first
        self.fraction = fraction
    }

    var value: Double { Double("\(wholeDigits).\(fraction.isEmpty ? "0" : fraction)") ?? .infinity }

    /// The number times `multiplier`, rounded down to a whole number, or nil when it overflows.
    func times(_ multiplier: UInt64) -> UInt64? {
        guard let whole = UInt64(wholeDigits) else { return nil }
        let (product, overflow) = whole.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        guard !fraction.isEmpty else { return product }
        // Up to 18 fraction digits fit an UInt64; more do not change a byte count.
        let digits = fraction.prefix(18)
        guard let numerator = UInt64(digits) else { return product }
        var scale: UInt64 = 1
        for _ in digits { scale *= 10 }
        let (high, low) = numerator.multipliedFullWidth(by: multiplier)
        let part = scale.dividingFullWidth((high, low)).quotient
        let (sum, sumOverflow) = product.addingReportingOverflow(part)
        return sumOverflow ? nil : sum
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
