#!/usr/bin/env bash
# Regenerates the demo clips in this folder with espeak-ng (Debian: apt-get install espeak-ng).
# They are synthetic speech, so anyone can play something without the evaluation set; the
# real evaluation speech stays in ../shared/speech (MAXWHISPER_SPEECH_DIR).
set -euo pipefail
cd "$(dirname "$0")"
say() {  # say FILE VOICE TEXT
    espeak-ng -v "$2" -s 150 -w "$1.tmp.wav" "$3"
    # 16 kHz mono, as Whisper wants it (espeak-ng writes 22.05 kHz)
    python3 - "$1.tmp.wav" "$1" <<'PY'
import sys, wave, audioop
src, dst = sys.argv[1], sys.argv[2]
with wave.open(src) as w:
    frames, rate, width = w.readframes(w.getnframes()), w.getframerate(), w.getsampwidth()
converted, _ = audioop.ratecv(frames, width, 1, rate, 16000, None)
with wave.open(dst, "wb") as out:
    out.setnchannels(1); out.setsampwidth(width); out.setframerate(16000)
    out.writeframes(converted)
PY
    rm -f "$1.tmp.wav"
}
say hello_max.wav en-us "Hello! This is MAX Whisper, speech recognition running on the MAX graph compiler."
say weather_report.wav en-gb "Tomorrow will be cloudy in the morning, with sunny spells and a light breeze in the afternoon."
say numbers.wav en-us "Please call me back at five five five, one two three four, before six thirty tonight."
# German, for translation (task="translate": X -> English) and language detection
say wetter_de.wav de "Guten Tag. Morgen wird es am Vormittag bewölkt, am Nachmittag scheint die Sonne und es weht ein leichter Wind."
