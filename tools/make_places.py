"""Write places.xlsx: the study's 12 Seoul places and attractions near them (reproducible; run from the repo top).

    python tools/make_places.py [--out places.xlsx]

Coordinates are WGS84 decimal degrees, good to about 100 m; addresses are road-name addresses. The first search
term of each place is also its folder name in a local photo collection, so it is plain lower-case English.
Edit the lists below and re-run rather than editing the workbook by hand: Excel likes to turn "10" into 10.
The background sheet holds generic searches for photos of none of our places (crawled into data/background/):
`landmark` ones for look-alike architecture elsewhere, `everyday` ones for photos with no landmark at all. None
names one of our places or a Seoul landmark; the later terms steer a search away from Korea when the first runs dry.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's package, when run as a script

from locator.core import places  # noqa: E402
from locator.core.cli import ArgumentParser, run  # noqa: E402

# name, search terms (English first, then Korean), latitude, longitude, address, description
PLACES = [
    ("63 Building", "63 building;63빌딩;63 Square Seoul;Yeouido 63 building", 37.5198, 126.9403,
     "50 63-ro, Yeongdeungpo-gu, Seoul (서울 영등포구 63로 50)",
     "249 m gold-tinted glass skyscraper on Yeouido island, completed in 1985."),
    ("Seoul City Hall", "seoul city hall;서울시청;서울특별시청;Seoul City Hall new building", 37.5663, 126.9779,
     "110 Sejong-daero, Jung-gu, Seoul (서울 중구 세종대로 110)",
     "Wave-shaped glass city hall (2012) behind the 1926 stone hall, now Seoul Library, facing Seoul Plaza."),
    ("Statue of Admiral Yi Sun-shin", "statue of admiral yi sun-shin;이순신 장군 동상;충무공 이순신 동상;"
     "Yi Sun-sin statue Gwanghwamun", 37.5710, 126.9769,
     "Gwanghwamun Square, 172 Sejong-daero, Jongno-gu, Seoul (서울 종로구 세종대로 172)",
     "17 m bronze statue (1968) of the Joseon admiral who defeated the Japanese navy in the Imjin War."),
    ("Statue of King Sejong", "statue of king sejong;세종대왕 동상;세종대왕상;King Sejong statue Gwanghwamun",
     37.5727, 126.9769, "Gwanghwamun Square, 172 Sejong-daero, Jongno-gu, Seoul (서울 종로구 세종대로 172)",
     "9.5 m seated bronze statue (2009) of King Sejong the Great, who created the Hangul alphabet."),
    ("Geunjeongjeon Hall, Gyeongbokgung Palace", "geunjeongjeon;근정전;경복궁 근정전;"
     "Gyeongbokgung Geunjeongjeon throne hall", 37.5786, 126.9770,
     "Gyeongbokgung, 161 Sajik-ro, Jongno-gu, Seoul (서울 종로구 사직로 161)",
     "Throne hall of Gyeongbokgung, the main Joseon palace; the two-storey hall was rebuilt in 1867."),
    ("Olympic Park", "olympic park seoul;올림픽공원;Seoul Olympic Park World Peace Gate", 37.5206, 127.1215,
     "424 Olympic-ro, Songpa-gu, Seoul (서울 송파구 올림픽로 424)",
     "Park of the 1988 Summer Olympics around the Baekje-era Mongchontoseong earthen fortress."),
    ("Lotte World Tower", "lotte world tower;롯데월드타워;Lotte World Tower Jamsil", 37.5126, 127.1025,
     "300 Olympic-ro, Songpa-gu, Seoul (서울 송파구 올림픽로 300)",
     "555 m, 123-storey skyscraper completed in 2017, the tallest building in Korea."),
    ("Myeongdong Cathedral", "myeongdong cathedral;명동성당;명동대성당;Myeongdong Cathedral Seoul", 37.5633, 126.9873,
     "74 Myeongdong-gil, Jung-gu, Seoul (서울 중구 명동길 74)",
     "Gothic Revival red-brick cathedral completed in 1898, seat of the Archdiocese of Seoul."),
    ("N Seoul Tower", "n seoul tower;N서울타워;남산타워;Namsan Tower", 37.5512, 126.9882,
     "105 Namsangongwon-gil, Yongsan-gu, Seoul (서울 용산구 남산공원길 105)",
     "236 m communication and observation tower on Namsan, built 1971 and opened to visitors in 1980."),
    ("Seokchon Lake", "seokchon lake;석촌호수;Seokchon Lake cherry blossoms Jamsil", 37.5090, 127.1020,
     "Jamsil-dong, Songpa-gu, Seoul (서울 송파구 잠실동)",
     "Twin lake beside Lotte World, left of an old Han River channel, ringed by a cherry-tree walk."),
    ("Seodaemun Prison History Museum", "seodaemun prison history museum;서대문형무소역사관;서대문형무소;"
     "Seodaemun Prison Seoul", 37.5743, 126.9562,
     "251 Tongil-ro, Seodaemun-gu, Seoul (서울 서대문구 통일로 251)",
     "Prison opened in 1908 under Japanese rule, where independence activists were held; a museum since 1998."),
    ("Culture Station Seoul 284 (old Seoul Station)", "culture station seoul 284;문화역서울284;구 서울역사;"
     "Old Seoul Station building", 37.5560, 126.9720,
     "1 Tongil-ro, Jung-gu, Seoul (서울 중구 통일로 1)",
     "The old Seoul Station building (1925), restored as an arts venue in 2011; 284 is its historic-site number."),
]

# name, latitude, longitude, kind, description
ATTRACTIONS = [
    # Yeouido
    ("Yeouido Hangang Park", 37.5271, 126.9326, "park", "Riverside park on the Han; cherry blossoms, night markets"),
    ("Saetgang Ecological Park", 37.5172, 126.9283, "park", "Wetland park along the Saetgang stream"),
    ("Yeouido Park", 37.5256, 126.9240, "park", "Long park across the middle of Yeouido"),
    ("Noryangjin Fisheries Market", 37.5133, 126.9403, "market", "Seoul's big seafood market, across the bridge"),
    # City Hall, Gwanghwamun
    ("Deoksugung Palace", 37.5658, 126.9751, "palace", "Joseon palace with a stone Western-style hall"),
    ("Seoul Plaza", 37.5656, 126.9779, "square", "Lawn square before City Hall; skating rink in winter"),
    ("Seoul Museum of Art", 37.5640, 126.9737, "museum", "City art museum in the former Supreme Court building"),
    ("Cheonggye Plaza", 37.5693, 126.9783, "sight", "Start of the restored Cheonggyecheon stream walk"),
    ("Gwanghwamun Gate", 37.5759, 126.9768, "sight", "Main gate of Gyeongbokgung; guard-changing ceremony"),
    ("National Museum of Korean Contemporary History", 37.5745, 126.9781, "museum",
     "Korea's history since 1876, rooftop view of the palace"),
    ("Sejong Center for the Performing Arts", 37.5725, 126.9757, "theatre", "Concert hall and theatre"),
    ("The Story of King Sejong", 37.5724, 126.9768, "museum", "Exhibition under the King Sejong statue"),
    ("Seoul Museum of History", 37.5704, 126.9705, "museum", "Seoul from prehistory to today"),
    # Gyeongbokgung
    ("Gyeonghoeru Pavilion", 37.5797, 126.9761, "sight", "Banquet pavilion on a lotus pond in Gyeongbokgung"),
    ("National Folk Museum of Korea", 37.5818, 126.9793, "museum", "Everyday life of Koreans through history"),
    ("National Palace Museum of Korea", 37.5766, 126.9752, "museum", "Royal treasures of the Joseon dynasty"),
    ("Bukchon Hanok Village", 37.5826, 126.9836, "sight", "Hillside lanes of traditional houses"),
    ("MMCA Seoul", 37.5787, 126.9800, "museum", "National Museum of Modern and Contemporary Art"),
    # Olympic Park
    ("Mongchontoseong Fortress", 37.5215, 127.1185, "historic site", "Baekje earthen fortress of the 3rd century"),
    ("Seoul Baekje Museum", 37.5165, 127.1180, "museum", "Seoul as the Baekje capital Hanseong"),
    ("SOMA Museum of Art", 37.5176, 127.1227, "museum", "Sculpture and drawing museum in Olympic Park"),
    ("Pungnaptoseong Fortress", 37.5307, 127.1200, "historic site", "Long Baekje earthen wall"),
    # Jamsil
    ("Seoul Sky", 37.5126, 127.1026, "viewpoint", "Observation decks on floors 117-123 of Lotte World Tower"),
    ("Lotte World Adventure", 37.5111, 127.0981, "amusement park", "Indoor theme park"),
    ("Lotte World Aquarium", 37.5131, 127.1040, "aquarium", "Aquarium under Lotte World Mall"),
    ("Lotte World Magic Island", 37.5097, 127.0988, "amusement park", "Outdoor rides on an island in the lake"),
    ("Seokchon-dong Ancient Tombs", 37.5027, 127.1043, "historic site", "Stone-piled Baekje royal tombs"),
    ("Samjeondobi Monument", 37.5078, 127.0963, "historic site", "Stele of the 1637 surrender to the Qing"),
    ("Songridan-gil", 37.5099, 127.1086, "street", "Cafe street east of Seokchon Lake"),
    # Myeongdong, Namsan
    ("Myeongdong Shopping Street", 37.5637, 126.9838, "shopping", "Cosmetics, fashion and street food"),
    ("Namdaemun Market", 37.5591, 126.9776, "market", "Seoul's oldest and largest traditional market"),
    ("Namsangol Hanok Village", 37.5593, 126.9944, "sight", "Five restored Joseon houses and a garden"),
    ("Namsan Cable Car", 37.5569, 126.9822, "viewpoint", "Cable car up Namsan to the tower"),
    ("Namsan Bongsudae", 37.5509, 126.9877, "historic site", "Reconstructed Joseon beacon mounds"),
    ("Ahn Jung-geun Memorial Hall", 37.5539, 126.9836, "museum", "Memorial to the independence activist"),
    # Seodaemun
    ("Independence Gate", 37.5723, 126.9595, "historic site", "Granite arch of 1897, modelled on the Arc de Triomphe"),
    ("Independence Park", 37.5740, 126.9577, "park", "Park around the gate and the prison"),
    ("Dilkusha", 37.5745, 126.9633, "historic site", "1923 house of an American journalist who reported March 1st"),
    ("Gyeonghuigung Palace", 37.5714, 126.9683, "palace", "The West Palace of the Joseon kings"),
    # Seoul Station
    ("Seoullo 7017", 37.5565, 126.9700, "park", "Elevated garden walk on a former highway overpass"),
    ("Sungnyemun Gate", 37.5600, 126.9754, "historic site", "Namdaemun, the great south gate of the city wall"),
    ("Yakhyeon Catholic Church", 37.5597, 126.9668, "church", "Korea's first Western-style church, 1892"),
]

# query (first term = folder name), kind. Generic on purpose: a Commons search for "tower" may still return
# N Seoul Tower; preprocess.py drops a background photo that is a near-duplicate of a place photo (`conflict`).
BACKGROUND = [
    ("castle;medieval castle;castle germany", "landmark"),
    ("gothic cathedral;cathedral france;cathedral italy", "landmark"),
    ("baroque church;church austria;church spain", "landmark"),
    ("orthodox church;church russia;church greece", "landmark"),
    ("mosque;mosque turkey;mosque minaret", "landmark"),
    ("hindu temple;temple india", "landmark"),
    ("greek temple;ancient greek ruins", "landmark"),
    ("roman ruins;roman amphitheatre", "landmark"),
    ("pyramid;egyptian pyramid;mayan pyramid", "landmark"),
    ("pagoda;pagoda china;pagoda japan", "landmark"),
    ("stupa;buddhist stupa nepal", "landmark"),
    ("lighthouse;lighthouse coast", "landmark"),
    ("windmill;windmill netherlands", "landmark"),
    ("suspension bridge;suspension bridge usa", "landmark"),
    ("stone arch bridge;old stone bridge europe", "landmark"),
    ("clock tower;clock tower england", "landmark"),
    ("television tower;tv tower germany", "landmark"),
    ("skyscraper;skyscraper new york;skyscraper dubai", "landmark"),
    ("town hall;town hall europe", "landmark"),
    ("parliament building;capitol building", "landmark"),
    ("opera house;opera house europe", "landmark"),
    ("triumphal arch;triumphal arch europe", "landmark"),
    ("equestrian statue;equestrian statue europe", "landmark"),
    ("obelisk;egyptian obelisk", "landmark"),
    ("mausoleum;mausoleum india", "landmark"),
    ("fortress;hill fort", "landmark"),
    ("street;street scene;residential street", "everyday"),
    ("kitchen;home kitchen interior", "everyday"),
    ("bedroom;bedroom interior", "everyday"),
    ("living room;living room interior", "everyday"),
    ("office interior;open plan office", "everyday"),
    ("classroom;school classroom", "everyday"),
    ("supermarket;grocery store shelves", "everyday"),
    ("food;meal on a plate;dish", "everyday"),
    ("cat;domestic cat", "everyday"),
    ("dog;domestic dog", "everyday"),
    ("bird;wild bird", "everyday"),
    ("car;automobile", "everyday"),
    ("bus;city bus", "everyday"),
    ("bicycle;parked bicycle", "everyday"),
    ("portrait;portrait photograph", "everyday"),
    ("crowd;people walking", "everyday"),
    ("forest;woodland", "everyday"),
    ("mountain;mountain landscape", "everyday"),
    ("beach;sandy beach", "everyday"),
    ("flowers;flower close-up", "everyday"),
    ("farm field;farmland", "everyday"),
    ("document;printed page;handwritten letter", "everyday"),
    ("screenshot;computer screenshot", "everyday"),
    ("desk;computer desk", "everyday"),
]


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("places.xlsx"))
    args = ap.parse_args(argv)
    rows = [(f"{i:02x}", *p) for i, p in enumerate(PLACES)]
    places.write(args.out, rows, ATTRACTIONS, BACKGROUND)
    table = places.load(args.out)  # what we wrote must pass our own validation
    kinds = {k: sum(b.kind == k for b in table.background) for k in places.BACKGROUND_KINDS}
    print(f"wrote {args.out}: {len(table)} places, {len(table.attractions)} attractions, background queries "
          + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    return 0


if __name__ == "__main__":
    run(main)
