//! Modalities of queries and documents, and the M-BEIR task each (query, candidate) pair makes. Shared by the
//! world, which writes M-BEIR files, and the ingest, which reads them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a query or document is made of, spelled as M-BEIR spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Modality {
    #[serde(rename = "text")]
    Text,
    #[serde(rename = "image")]
    Image,
    #[serde(rename = "image,text")]
    ImageText,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::ImageText => "image,text",
        }
    }

    /// The modality of a record with these parts.
    pub fn of(has_text: bool, has_image: bool) -> Option<Self> {
        match (has_text, has_image) {
            (true, false) => Some(Modality::Text),
            (false, true) => Some(Modality::Image),
            (true, true) => Some(Modality::ImageText),
            (false, false) => None,
        }
    }

    pub fn has_text(self) -> bool {
        self != Modality::Image
    }

    pub fn has_image(self) -> bool {
        self != Modality::Text
    }
}

impl FromStr for Modality {
    type Err = String;

    /// M-BEIR spells image+text both `image,text` and `text,image`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "text" => Ok(Modality::Text),
            "image" => Ok(Modality::Image),
            "image,text" | "text,image" => Ok(Modality::ImageText),
            other => Err(format!(
                "unknown modality `{other}` (expected text, image or image,text)"
            )),
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The M-BEIR task of a (query modality, candidate modality) pair, id and name.
pub fn mbeir_task(query: Modality, candidate: Modality) -> (i32, &'static str) {
    use Modality::*;
    match (query, candidate) {
        (Text, Image) => (0, "text->image"),
        (Text, Text) => (1, "text->text"),
        (Text, ImageText) => (2, "text->image,text"),
        (Image, Text) => (3, "image->text"),
        (Image, Image) => (4, "image->image"),
        (Image, ImageText) => (5, "image->image,text"),
        (ImageText, Text) => (6, "image,text->text"),
        (ImageText, Image) => (7, "image,text->image"),
        (ImageText, ImageText) => (8, "image,text->image,text"),
    }
}

/// The task name of an M-BEIR task id.
pub fn mbeir_task_name(id: i32) -> Option<&'static str> {
    use Modality::*;
    let all = [Text, Image, ImageText];
    all.iter()
        .flat_map(|q| all.iter().map(move |c| mbeir_task(*q, *c)))
        .find(|(task, _)| *task == id)
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_table_matches_mbeir() {
        use Modality::*;
        assert_eq!(mbeir_task(Text, Image).0, 0);
        assert_eq!(mbeir_task(Image, Image).0, 4);
        assert_eq!(mbeir_task(ImageText, ImageText).0, 8);
        assert_eq!(mbeir_task_name(7), Some("image,text->image"));
        assert_eq!(mbeir_task_name(9), None);
        assert_eq!("text,image".parse::<Modality>().unwrap(), ImageText);
        assert!("video".parse::<Modality>().is_err());
    }
}
