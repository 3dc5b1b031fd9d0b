//! Cutting text into chunks of at most N characters on word boundaries.

/// Split `text` into chunks of at most `max_chars` characters (not bytes),
/// each made of whole words joined by single spaces; a word longer than
/// `max_chars` is cut into pieces of exactly `max_chars` (the last shorter).
pub(crate) fn word_bounded(text: &str, max_chars: usize) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    for word in text.split_whitespace() {
        let word_chars = word.chars().count();
        if word_chars > max_chars {
            if !current.is_empty() {
                chunks.push(std::mem::take(&mut current));
            }
            let mut piece = String::new();
            let mut piece_chars = 0;
            for ch in word.chars() {
                piece.push(ch);
                piece_chars += 1;
                if piece_chars == max_chars {
                    chunks.push(std::mem::take(&mut piece));
                    piece_chars = 0;
                }
            }
            current = piece;
            current_chars = piece_chars;
            continue;
        }
        let needed = if current.is_empty() {
            word_chars
        } else {
            current_chars + 1 + word_chars
        };
        if needed > max_chars {
            chunks.push(std::mem::take(&mut current));
            current_chars = 0;
        }
        if !current.is_empty() {
            current.push(' ');
            current_chars += 1;
        }
        current.push_str(word);
        current_chars += word_chars;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}
