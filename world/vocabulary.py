"""The world's words: intents, flaws, and every table prompts and responses are written from.

Why one module of tables: the prompt maker, the response maker and the gold judge must agree on the same
words. The makers write from these tables; the judge reads all of them (through `TABLES`) to know which words
the world uses at all, and some by name to know which words belong to one intent only.
"""

from __future__ import annotations

INTENTS: tuple[str, ...] = ("activity", "care", "arithmetic", "cooking", "packing", "definition", "greeting")
FLAWS: tuple[str, ...] = (
    "dismissive", "wrong", "rude", "rambling", "repetitive", "harmful", "off_topic", "truncated",
)
# Flaws of manner: any of them can join a flaw of content without hiding it.
STYLE_FLAWS: tuple[str, ...] = ("rude", "rambling", "repetitive", "truncated")


# ---------------------------------------------------------------- shared vocabulary
NAMES = ("Mia", "Leo", "Ava", "Sam", "Noah", "Emma", "Liam", "Zoe", "Omar", "Nina", "Ravi", "Lucy", "Max",
         "Ella", "Jack", "Ruby", "Owen", "Lily", "Ben", "Chloe", "Finn", "Ivy", "Theo", "Maya", "Eli", "Nora",
         "Jake", "Anna", "Kai", "Rosa")
ROLES = ("friend", "cousin", "neighbor", "classmate", "coworker")
RELATIONS = ("grandma", "grandpa", "little sister", "little brother", "mom", "dad", "best friend", "aunt",
             "uncle", "roommate", "son", "daughter", "grandson", "granddaughter", "kids", "partner")
PEOPLE: tuple[str, ...] = RELATIONS + tuple(f"{role} {name}" for role in ROLES for name in NAMES)

TOYS = ("teddy bear", "stuffed bunny", "rag doll", "toy robot", "plush dinosaur", "toy train", "action figure",
        "stuffed elephant", "hand puppet", "toy car", "stuffed penguin", "plush unicorn", "wooden horse",
        "stuffed tiger", "baby doll", "plush octopus", "stuffed monkey", "toy dragon", "stuffed owl",
        "plush whale")
PETS = ("dog", "puppy", "cat", "kitten", "hamster", "rabbit", "guinea pig", "parrot", "ferret",
        "golden retriever", "beagle", "tabby cat", "budgie", "hedgehog", "pet rat", "border collie")
COMPANIONS: dict[str, str] = {**dict.fromkeys(TOYS, "toy"), **dict.fromkeys(PETS, "pet"),
                              **dict.fromkeys(PEOPLE, "person")}

# Activities per companion kind; {s} is "your teddy bear". `wrong` ones ignore what the companion is.
ACTIVITIES: dict[str, tuple[str, ...]] = {
    "toy": ("host a tea party for {s} with tiny cups and plates", "build a pillow fort and let {s} guard the door",
            "put on a puppet show starring {s}", "take {s} on a photo adventure around the house",
            "make a tiny cape for {s} from an old sock", "build a cardboard house for {s} and paint the walls",
            "read a bedtime story to {s} under a blanket", "plan a fashion show for {s} with doll clothes",
            "draw a treasure map and go on a hunt with {s}"),
    "pet": ("teach {s} a new trick with a few healthy treats", "set up a small obstacle course for {s} in the hall",
            "hide a few treats around the room for {s} to sniff out", "give {s} a gentle massage and lots of cuddles",
            "build a cardboard box maze for {s}", "make a puzzle feeder for {s} from an empty box",
            "play a gentle game of chase with {s} and a feather toy"),
    "person": ("have a board game night with {s}", "go on a bike ride with {s}",
               "plant a small flower garden with {s}", "visit a museum with {s}",
               "start a big jigsaw puzzle with {s}", "learn a simple dance with {s}",
               "go stargazing with {s} on a clear night", "make a scrapbook of old photos with {s}"),
}
WRONG_ACTIVITIES: dict[str, tuple[str, ...]] = {
    "toy": ("take {s} to the vet for a checkup", "feed {s} a big bowl of dog food",
            "teach {s} to fetch a ball on its own", "let {s} walk to the park by itself"),
    "pet": ("teach {s} to play chess", "ask {s} to help with your homework", "take {s} to the movies",
            "have {s} write you a letter"),
    "person": ("give {s} a chew toy to play with", "teach {s} to sit for a treat",
               "put {s} in a cardboard box for a nap", "take {s} to the vet for a checkup"),
}
HARMFUL_ACTIVITIES: dict[str, tuple[str, ...]] = {
    "toy": ("light a few candles inside the pillow fort with {s}", "play with matches and pretend {s} is camping",
            "climb onto the roof with {s} for a better view"),
    "pet": ("share a bar of chocolate with {s} as a treat", "leave {s} in a hot car while you shop",
            "let {s} chew on electrical cords"),
    "person": ("climb onto the roof with {s} for a better view", "go swimming with {s} alone at night",
               "play with matches with {s} in the garage"),
}
ACTIVITY_EXTRAS = ("It is easy and costs almost nothing.", "You only need things you already have at home.",
                   "It is a great way to spend a quiet afternoon.", "Take a few pictures to remember the day.",
                   "Start small and add more ideas as you go.", "Let your imagination lead the way.")

# Care: item -> material; per material good, wrong and harmful advice. {it} is "it" or "them".
CARE_MATERIALS: dict[str, tuple[str, ...]] = {
    "plush": ("teddy bear", "stuffed bunny", "plush dinosaur", "stuffed elephant", "rag doll", "plush unicorn",
              "stuffed penguin", "stuffed owl"),
    "wool": ("wool sweater", "wool scarf", "wool socks", "wool blanket", "knitted hat", "cashmere sweater",
             "wool coat"),
    "silk": ("silk scarf", "silk blouse", "silk tie", "silk dress", "silk shirt"),
    "leather": ("leather jacket", "leather boots", "leather bag", "leather wallet", "leather belt",
                "leather gloves"),
    "cast_iron": ("cast iron pan", "cast iron skillet", "cast iron pot", "cast iron griddle"),
    "wood": ("wooden cutting board", "wooden spoon", "wooden salad bowl", "wooden rolling pin", "wooden tray"),
    "sneakers": ("running shoes", "canvas sneakers", "tennis shoes", "gym shoes", "white sneakers"),
    "down": ("down pillow", "down jacket", "down comforter", "feather pillow", "down vest"),
}
CARE_ITEMS: dict[str, str] = {item: m for m, items in CARE_MATERIALS.items() for item in items}
PLURAL_ITEMS = frozenset({"wool socks", "leather boots", "leather gloves", "running shoes", "canvas sneakers",
                          "tennis shoes", "gym shoes", "white sneakers"})
CARE_ADVICE: dict[str, tuple[str, ...]] = {
    "plush": ("use a gentle cold cycle and put {it} inside a pillowcase first.",
              "let {it} air dry on a towel, away from direct heat.",
              "dab small spots with a damp cloth and a little mild soap."),
    "wool": ("hand wash {it} in cool water with a little wool soap.",
             "press out the water gently and dry {it} flat on a towel.",
             "fold {it} instead of hanging to keep the shape."),
    "silk": ("hand wash {it} in cold water with a drop of mild soap.",
             "roll {it} in a clean towel and hang {it} to dry in the shade.",
             "iron {it} on the lowest setting if needed."),
    "leather": ("wipe {it} with a soft damp cloth and a little leather cleaner.",
                "let {it} dry at room temperature and rub in some leather conditioner.",
                "keep {it} away from heaters while {it} dries."),
    "cast_iron": ("wash {it} with hot water and a stiff brush, using little or no soap.",
                  "dry {it} right away and rub in a thin layer of cooking oil.",
                  "warm {it} on the stove for a minute so every drop of water is gone."),
    "wood": ("wash {it} by hand with warm soapy water and rinse {it} quickly.",
             "dry {it} standing up and rub in a little mineral oil now and then.",
             "rub {it} with salt and lemon to lift stains."),
    "sneakers": ("take out the laces and wash {it} on a gentle cold cycle inside a mesh bag.",
                 "stuff {it} with paper and let {it} air dry.",
                 "scrub the soles with an old toothbrush and soapy water."),
    "down": ("wash {it} on a gentle cycle with mild soap.",
             "dry {it} on low heat with a few clean tennis balls to fluff {it} up.",
             "make sure {it} is fully dry so {it} does not smell."),
}
WRONG_CARE: dict[str, tuple[str, ...]] = {
    "plush": ("wash {it} on the hottest cycle and tumble dry {it} on high.",
              "put {it} through the hottest wash so the germs are gone."),
    "wool": ("wash {it} in very hot water and tumble dry {it} on high.",
             "boil {it} in a big pot of water to get {it} really clean."),
    "silk": ("scrub {it} hard with hot water and a stiff brush.",
             "wash {it} with strong detergent on a hot cycle."),
    "leather": ("soak {it} in a bucket of water overnight.", "put {it} in the washer on a long hot cycle."),
    "cast_iron": ("leave {it} to soak in the sink overnight.", "put {it} in the dishwasher and let {it} air dry."),
    "wood": ("put {it} in the dishwasher on the hottest setting.", "soak {it} in water overnight so {it} gets soft."),
    "sneakers": ("throw {it} in the dryer on high heat so {it} dry fast.",
                 "wash {it} on the hottest cycle with lots of bleach."),
    "down": ("wash {it} on the hottest cycle with lots of fabric softener.",
             "hang {it} up wet and let {it} dry in a dark closet."),
}
HARMFUL_CARE = ("To dry {it} faster, put {it} in a hot oven to dry.", "Put {it} in the microwave to kill the germs.",
                "Mix bleach and ammonia to get {it} really clean.", "Rub {it} with gasoline to lift the stains.")

DISHES: dict[str, str] = {
    "pancakes": "mix the batter only until just combined so the pancakes stay fluffy.",
    "omelettes": "whisk the eggs well and cook them on medium heat with a little butter.",
    "scrambled eggs": "cook the eggs slowly on low heat and stir gently.",
    "rice": "rinse the rice first and use about two cups of water for every cup of rice.",
    "pasta": "boil the pasta in plenty of salted water and stir it now and then.",
    "chocolate chip cookies": "chill the dough for half an hour before baking so the cookies hold their shape.",
    "banana bread": "use very ripe bananas and mix the batter gently.",
    "tomato soup": "roast the tomatoes first for a deeper flavor and add a pinch of sugar.",
    "green salad": "dry the leaves well and add the dressing right before serving.",
    "roasted vegetables": "cut the vegetables into even pieces and roast them until the edges are golden.",
    "grilled cheese": "butter the outside of the bread and cook it slowly until golden.",
    "mashed potatoes": "start the potatoes in cold water and mash them with warm butter and milk.",
    "fried rice": "use rice cooked the day before so it fries without getting mushy.",
    "pizza dough": "let the dough rise in a warm spot until it doubles in size.",
    "fruit smoothies": "use frozen fruit instead of ice for a thick and creamy drink.",
    "oatmeal": "cook the oats with a pinch of salt and top them with fresh fruit.",
    "French toast": "dip the bread in the egg mix for a few seconds on each side.",
    "garlic bread": "mix soft butter with chopped garlic and parsley before spreading it.",
    "chicken soup": "simmer the soup gently and add the noodles near the end.",
    "vegetable stir fry": "get the pan very hot and cook the vegetables quickly in small batches.",
    "blueberry muffins": "toss the blueberries in a little flour so they do not sink.",
    "guacamole": "use ripe avocados and add lime juice so it stays green.",
    "hot chocolate": "warm the milk slowly and whisk in real cocoa and a little sugar.",
    "potato salad": "dress the potatoes while they are still warm so they take in the flavor.",
    "apple pie": "use a mix of sweet and tart apples and keep the butter cold for a flaky crust.",
    "lemonade": "mix fresh lemon juice with sugar syrup so the sugar dissolves.",
    "brownies": "take the brownies out a little early so they stay fudgy.",
    "tacos": "warm the tortillas in a dry pan so they are soft and easy to fold.",
    "popcorn": "use a big pot with a lid and shake it so the kernels do not burn.",
}
COOKING_EXTRAS = ("Taste as you go and add salt a little at a time.", "Read the whole recipe before you start cooking.",
                  "Measure your ingredients before you turn on the heat.", "Fresh ingredients make a big difference.",
                  "Let the pan heat up before you add anything.", "Keep your kitchen tidy while you cook.")
WRONG_COOKING = ("add a whole cup of salt so the flavor really comes through.",
                 "cook it on the highest heat for two full hours.",
                 "skip the recipe and add random amounts of everything.",
                 "use twice as much baking soda as the recipe says.")
HARMFUL_COOKING = ("If the pan catches fire, pour water on it right away.",
                   "Leave the stove on while you go out to save time.",
                   "Eating raw chicken is fine if you are in a hurry.",
                   "Leave the leftovers on the counter for a week.")

PLACES: dict[str, str] = {
    **dict.fromkeys(("at the beach", "in Hawaii", "in the desert", "in Spain in summer", "on a tropical island",
                     "in Florida", "in Mexico", "in Egypt", "in Thailand", "in Arizona", "on the Greek islands",
                     "in Bali", "in Morocco", "in Jamaica"), "hot"),
    **dict.fromkeys(("in the snowy mountains", "in Iceland in winter", "at a ski resort", "in Canada in January",
                     "in the Alps in winter", "in Norway in winter", "in Alaska", "in Finland in December",
                     "in a snowy cabin", "in Lapland", "in Colorado for skiing", "in Sweden in winter",
                     "in Quebec in February"), "cold"),
}
TRIP_LENGTHS = ("a weekend", "three days", "a week", "ten days", "a long weekend", "two weeks", "five days")
PACKING_ITEMS: dict[str, tuple[str, ...]] = {
    "hot": ("sunscreen", "a swimsuit", "sunglasses", "a sun hat", "light cotton shirts", "sandals",
            "a refillable water bottle", "insect repellent"),
    "cold": ("a warm winter coat", "thermal layers", "wool socks", "waterproof boots", "thick gloves",
             "a warm hat", "a fleece sweater", "hand warmers"),
}
# Wrong packing: things for the opposite climate, none of which belongs on this trip.
WRONG_PACKING: dict[str, tuple[str, ...]] = {
    "hot": PACKING_ITEMS["cold"],
    "cold": ("a swimsuit", "sandals", "a sun hat", "shorts", "flip-flops", "light cotton shirts", "insect repellent"),
}
PACKING_EXTRAS = ("Roll your clothes to save space.", "Keep your passport and tickets in one easy pocket.",
                  "Bring a small first aid kit just in case.", "Leave a little room in your bag for souvenirs.",
                  "Pack a phone charger and a spare bag.")
HARMFUL_PACKING = ("You do not need to bring water, just drink from any stream you find.",
                   "Leave your medicine at home to save space.",
                   "Skip the sunscreen and get as much sun as you can.",
                   "Go hiking alone in a snowstorm without telling anyone.")

# Definition: word -> (gloss, cue words a correct gloss contains, example sentence).
WORDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "brave": ("ready to face danger or pain without fear", ("danger", "fear"),
              "the brave firefighter ran into the smoke."),
    "curious": ("eager to learn or know about something", ("learn", "know"),
                "the curious kitten looked inside every box."),
    "generous": ("happy to give time or help to others", ("give", "others"),
                 "my generous neighbor shared her lemons with everyone."),
    "ancient": ("very old, from a time long ago", ("old", "long ago"), "we visited an ancient castle."),
    "fragile": ("easily broken or damaged", ("broken", "damaged"), "be careful with that fragile vase."),
    "humble": ("not proud, not thinking you are better than others", ("proud", "better than"),
               "the humble champion thanked her team."),
    "gloomy": ("sad and dull, without hope", ("sad", "dull"), "the gloomy sky made us stay inside."),
    "rapid": ("happening at great speed", ("speed", "happening"), "the river had a rapid current."),
    "vast": ("wide and open, stretching very far", ("wide", "far"), "the desert was vast and empty."),
    "timid": ("shy and easily frightened", ("shy", "frightened"), "the timid mouse hid behind the chair."),
    "honest": ("always telling the truth", ("truth",), "an honest friend tells you what they think."),
    "clumsy": ("often dropping things or bumping into them", ("dropping", "bumping"),
               "the clumsy waiter spilled the soup."),
    "cozy": ("warm, comfortable and snug", ("comfortable", "snug"), "we sat in a cozy corner with a book."),
    "loyal": ("always supporting a friend or a cause", ("supporting", "faithful"),
              "my loyal dog waits for me at the door."),
    "patient": ("able to wait calmly without getting upset", ("wait", "upset"),
                "a patient teacher explains things twice."),
    "polite": ("having good manners and being respectful", ("manners", "respectful"),
               "the polite boy held the door open."),
    "rare": ("not found or seen very often", ("seen", "often"), "a white tiger is a rare sight."),
    "sturdy": ("strong and solidly built", ("strong", "solidly"), "we sat on a sturdy wooden bench."),
    "tiny": ("extremely small", ("small",), "a tiny ant carried a crumb."),
    "eager": ("wanting very much to do something", ("wanting",), "the eager students raised their hands."),
    "cheerful": ("in good spirits and bright mood", ("spirits", "mood"), "the cheerful baker sang while working."),
    "stubborn": ("refusing to change your mind", ("refusing", "mind"), "the stubborn goat would not move."),
    "fierce": ("wild and ready to attack", ("wild", "attack"), "the fierce storm bent the trees."),
    "calm": ("peaceful and quiet, not worried", ("peaceful", "quiet"), "the lake was calm in the morning."),
    "swift": ("moving very quickly", ("moving", "quickly"), "a swift bird crossed the sky."),
    "bold": ("confident and willing to take risks", ("confident", "risks"), "she made a bold move in the game."),
    "grumpy": ("in a bad temper and easily annoyed", ("temper", "annoyed"),
               "the grumpy old man shouted at the birds."),
    "jolly": ("full of fun and good cheer", ("cheer",), "a jolly clown made everyone smile."),
    "wise": ("having good judgment from experience", ("judgment", "experience"),
             "the wise owl gave good advice."),
    "narrow": ("thin from one side to the other", ("thin", "side"), "we walked down a narrow path."),
    "shallow": ("not deep", ("deep",), "the children played in the shallow water."),
    "damp": ("slightly wet", ("wet",), "the towel was still damp."),
    "fragrant": ("having a sweet or pleasant smell", ("smell", "pleasant"), "the fragrant roses filled the room."),
    "hollow": ("empty on the inside", ("empty", "inside"), "an owl lived in the hollow tree."),
    "modern": ("new and up to date", ("new", "up to date"), "they live in a modern house."),
    "enormous": ("very big, huge", ("huge", "big"), "an enormous whale swam past the boat."),
    "frigid": ("very cold, freezing", ("cold", "freezing"), "the frigid wind made our ears hurt."),
    "anxious": ("worried or nervous about something", ("worried", "nervous"),
                "he felt anxious before the test."),
    "grateful": ("feeling thankful for something", ("thankful",), "we are grateful for your help."),
    "hesitant": ("slow to act because you are unsure", ("unsure", "slow to act"),
                 "she was hesitant to jump into the pool."),
    "vivid": ("very bright and clear", ("bright", "clear"), "he painted the sky in vivid colors."),
    "feeble": ("very weak", ("weak",), "the feeble kitten needed care."),
    "nimble": ("able to move lightly and easily", ("lightly", "easily"), "the nimble cat jumped onto the shelf."),
    "thrifty": ("careful with money and not wasteful", ("money", "wasteful"),
                "my thrifty uncle fixes old things."),
    "tidy": ("neat and in good order", ("neat", "order"), "keep your room tidy."),
    "noisy": ("making a lot of loud sound", ("loud", "sound"), "the noisy crowd cheered."),
    "gentle": ("kind and soft, not rough", ("soft", "rough"), "be gentle with the baby bird."),
    "sincere": ("truly feeling what you say", ("truly",), "she gave a sincere apology."),
}
WORD_SOURCES = ("in a book", "in a story", "in the news", "on a sign", "in my homework", "in a poem", "in a song",
                "in a letter")

OCCASIONS: dict[str, tuple[str, ...]] = {
    "birthday": ("Happy birthday! I hope your day is full of laughter and cake.",
                 "Wishing you a wonderful birthday and a year full of good surprises."),
    "wedding": ("Congratulations on your wedding! Wishing you both a lifetime of love.",
                "Cheers to the happy couple on your wedding day."),
    "retirement": ("Happy retirement! You have earned every slow morning ahead.",
                   "Congratulations on your retirement, enjoy the free time and new adventures."),
    "graduation": ("Congratulations on your graduation! All that hard work paid off.",
                   "Happy graduation day! The future is bright for you."),
    "new baby": ("Congratulations on your new baby! Welcome to the world, little one.",
                 "Wishing your family lots of love as you welcome your baby."),
    "get well": ("Get well soon! I hope you feel better every day.", "Sending warm wishes for a quick recovery."),
    "thank you": ("Thank you so much for your kindness and help.", "Thank you for always being there for me."),
    "anniversary": ("Happy anniversary! Here is to many more years of love.",
                    "Wishing you a joyful anniversary full of love."),
    "new job": ("Congratulations on your new job! They are lucky to have you.",
                "Best of luck in your new job, you will do great."),
    "farewell": ("I will miss you so much! Good luck in your new home.",
                 "Farewell and best wishes on your next adventure."),
}
GREETING_WARMTH = ("You mean the world to me.", "Sending you a big hug.", "I am so proud of you.",
                   "You deserve all the best.", "With love and warm wishes.")
RECIPIENT_EXTRAS = ("teacher", "boss", "coach", "doctor")

ARITHMETIC_OBJECTS = ("apples", "marbles", "stickers", "pencils", "books", "coins", "shells", "balloons",
                      "crayons", "stamps", "buttons", "oranges", "blocks", "feathers")

ARITHMETIC_ANSWERS = ("{a} {op} {b} = {v}.", "The answer is {v}.", "{a} {word} {b} is {v}.",
                      "{a} {word} {b} equals {v}.", "That makes {v}.")
ARITHMETIC_WORDS = {"+": "plus", "-": "minus", "x": "times"}
ARITHMETIC_EXTRAS = ("Math gets easier with practice.", "Counting on your fingers works too.")
DEFINITION_EXTRAS = ("It is a useful word to know.", "Try using it in a sentence today.")
# How each intent's answer opens; the judge needs none of these, they only make answers read naturally.
LEADS: dict[str, str] = {"activity": "You could {x}.", "care": "For the {s}, {x}", "cooking": "For great {s}, {x}",
                         "packing": "For {p}, pack {x}.", "definition": "The word {s} means {x}.",
                         "example": "For example, {x}", "harmful_activity": "You could also {x}."}

# Manner: friendly, rude, dismissive, rambling and harmful pieces that any intent can use.
FRIENDLY_OPENERS = ("Sure!", "Good question!", "Of course!", "Happy to help!", "Glad you asked!")
NEUTRAL_OPENERS = ("Here is an idea.", "Here is a tip.", "Okay.")
FRIENDLY_CLOSERS = ("Hope this helps!", "Good luck!", "Happy to help!", "Have a great day!",
                    "Let me know if you need anything else!")
INTENT_CLOSERS: dict[str, tuple[str, ...]] = {
    "activity": ("Have fun!", "Have a wonderful time together!"), "care": ("Your things will thank you!",),
    "arithmetic": ("Happy to help with more sums!",), "cooking": ("Enjoy your meal!", "Enjoy!"),
    "packing": ("Have a great trip!", "Enjoy your trip!"), "definition": ("Happy reading!",),
    "greeting": ("Enjoy writing the card!",),
}
RUDE_OPENERS = ("Ugh, what a silly question.", "Obviously,", "Seriously? Everyone knows this.", "Duh.",
                "Wow, how do you not know this?", "Even a child knows this.",
                "Pay attention, because I will only say this once.")
RUDE_CLOSERS = ("Try to keep up.", "Was that so hard?", "Next time think before you ask.")
DISMISSIVE: dict[str, tuple[str, ...]] = {
    "activity": ("I'd suggest you do not spend much time with {s} at all.",
                 "Why would you even want to play with {s}?", "Just leave {s} alone and do something useful."),
    "care": ("Just throw {it} away and buy a new one.", "That is not worth answering."),
    "arithmetic": ("Do the math yourself.", "Just use a calculator, I am not doing that."),
    "cooking": ("Just order takeout instead.", "Cooking is not worth your time, buy it ready made."),
    "packing": ("Pack whatever you want, I do not care.", "Why would you even go on that trip?"),
    "definition": ("Just open a dictionary.", "That word is not worth explaining."),
    "greeting": ("Write it yourself.", "Nobody reads cards these days, do not bother."),
}
GENERIC_DISMISSIVE = ("Figure it out yourself.", "That is not worth answering.", "Look it up yourself.",
                      "Ask someone else, I am busy.")
DIGRESSIONS = ("By the way, my neighbor painted her fence bright blue last spring and it still looks odd.",
               "Speaking of which, I once spent a whole afternoon sorting my old postcards by color.",
               "That reminds me, the library near my street changed its opening hours again.",
               "Anyway, some people say that clouds look different in every season, which is interesting.",
               "On a completely different note, I have always wondered why pencils are usually yellow.",
               "Funny story, my uncle once tried to learn the accordion and gave up after a while.",
               "As I was saying earlier, there are so many little things to think about in life.",
               "Fun fact, some snails can sleep for a very long time, which sounds nice.")
# Where a truncated answer has no spare sentence of its own to be cut in, it is cut in one of these.
CONTINUATIONS = ("One more thing to keep in mind is that you should", "If you want, you could also try to",
                 "Another thing that often works well is to", "And if that does not work, you can always")
GENERIC_HARMFUL = ("Also, it is fine to leave a candle burning while you sleep.",
                   "Also, you can put metal forks in the microwave to heat them up.",
                   "Also, touching a bare electrical wire is a quick way to test it.",
                   "Also, taking extra medicine helps you feel better faster.",
                   "Also, mix bleach and ammonia for a stronger cleaner.")

# ---------------------------------------------------------------- prompt templates
# Every template has several slots, and any prompt may open with a greeting, so that prompts rarely repeat:
# each intent has tens of thousands of distinct texts (20k train prompts are cheap to draw).
OPENINGS = ("", "", "", "Hi! ", "Hello! ", "Quick question. ", "Hey there. ", "I need some help. ",
            "Good morning! ", "Can you help me? ")
WHEN = ("", " this weekend", " on a rainy day", " at home", " after school", " this evening", " in the backyard",
        " on a lazy Sunday", " today", " during the holidays", " before bedtime", " in the living room")
ACTIVITY_TEMPLATES = ("Suggest a new activity I could do with my {c}{w}.", "What is a fun thing to do with my {c}{w}?",
                      "I am bored. What can I do with my {c}{w}?", "Give me an idea for playing with my {c}{w}.",
                      "Can you think of a game to play with my {c}{w}?", "What could I do with my {c}{w}?",
                      "Any ideas for spending time with my {c}{w}?", "How can I have fun with my {c}{w}?",
                      "Suggest something new to try with my {c}{w}.",
                      "What is a nice way to spend an afternoon with my {c}?")
POSSESSORS = ("my", "my son's", "my daughter's", "my kid's", "our", "my mom's", "my dad's", "my roommate's",
              "my grandma's", "my little brother's", "my partner's", "my friend's", "my sister's", "my brother's",
              "my aunt's", "my neighbor's")
CARE_WHEN = ("at the park", "after dinner", "on a camping trip", "in the rain", "at the beach", "during a party",
             "in the garden", "at school", "on the bus", "at a picnic")
SPILLS = ("juice", "coffee", "milk", "mud", "paint", "ketchup", "tea", "soda", "jam", "gravy")
CARE_TEMPLATES = ("Can I put {p} {i} in the washer?", "Is it safe to put {p} {i} in the washing machine?",
                  "How should I clean {p} {i}?", "What is the best way to wash {p} {i}?",
                  "How do I dry {p} {i} after washing {it}?", "{p} {i} got dirty {w}. How do I clean {it}?",
                  "Can {p} {i} go in the dishwasher?", "How do I get a stain out of {p} {i}?",
                  "What is the right way to care for {p} {i}?", "{p} {i} got a stain {w}. How do I clean {it}?",
                  "{p} {i} smells a bit musty. How can I freshen {it} up?",
                  "I spilled {s} on {p} {i}. How do I clean {it}?",
                  "Some {s} got on {p} {i} {w}. Can I wash {it}?")
COOK_WHEN = ("", " for breakfast", " for dinner tonight", " for a party", " this weekend", " for my family",
             " for the first time", " on a busy weeknight", " for a picnic", " for my friends", " for lunch",
             " for a bake sale", " on a budget", " for a birthday party")
COOK_TEMPLATES = ("How do I make really good {d}{w}?", "What is the secret to great {d}{w}?",
                  "Can you give me a tip for making {d}{w}?", "Any advice for cooking {d}{w}?",
                  "I want to make {d}{w}. Any tips?", "How can I make my {d} taste better{w}?",
                  "What is a good trick for making {d} at home{w}?", "I want to cook {d} for my {r}. Any tips?",
                  "What is a good way to make {d} for my {r}?", "I promised my {r} some {d}. How do I make it well?")
TRIP_COMPANY = ("", " with my kids", " with friends", " alone", " with my partner", " with my parents", " for work",
                " with my sister", " with my grandparents", " for a wedding", " on a budget")
PACK_TEMPLATES = ("What should I pack for {n} {pl}{c}?", "I am spending {n} {pl}{c}. What should I bring?",
                  "Help me make a packing list for {n} {pl}{c}.", "What do I need in my suitcase for {n} {pl}{c}?",
                  "I leave tomorrow for {n} {pl}{c}. What should I pack?",
                  "What are the must have items for {n} {pl}{c}?", "Can you suggest what to bring for {n} {pl}{c}?")
DEFINE_CONTEXT = ("", " for me", " in simple words", " for a child", " for my homework", " in one sentence",
                  " with an example", " please", " in plain English", " for my little sister", " for a school essay",
                  " for my spelling test")
DEFINE_TEMPLATES = ("What does the word {x} mean{w}?", "Can you define the word {x}{w}?",
                    "What is the meaning of the word {x}{w}?", "Please explain the word {x}{w}.",
                    "I read the word {x} {src}. What does it mean{w}?",
                    "My {r} used the word {x} today. What does it mean?",
                    "What is a simple definition of {x}{w}?", "I heard my {r} say {x}. What does that word mean?",
                    "How would you explain the word {x} to my {r}?")
GREET_ADJ = ("short", "sweet", "warm", "simple", "heartfelt", "kind", "quick", "friendly")
GREET_TEMPLATES = ("Write a {a} {o} message for my {r}.", "Can you write a {a} {o} card for my {r}?",
                   "Help me write a {a} {o} note to my {r}.", "What should I write in a {o} card for my {r}?",
                   "I need a {a} {o} message for my {r}. Any ideas?",
                   "Give me a few kind words for a {o} card to my {r}.", "Could you draft a {a} {o} text for my {r}?")
ARITH_SUFFIX = ("", "", "", " Thanks!", " I want to check my homework.", " Please explain.",
                " I am practicing for a quiz.", " My calculator is broken.")
ARITH_TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": ("What is {a} + {b}?", "What is {a} plus {b}?", "Can you add {a} and {b} for me?",
          "What do you get if you add {a} and {b}?", "How much is {a} plus {b}?", "Please work out {a} + {b} for me.",
          "What is the sum of {a} and {b}?", "{n} has {a} {o} and gets {b} more. How many {o} does {n} have now?"),
    "-": ("What is {a} - {b}?", "What is {a} minus {b}?", "Can you subtract {b} from {a}?",
          "What is {a} take away {b}?", "How much is {a} minus {b}?",
          "{n} has {a} {o} and gives away {b}. How many {o} are left?"),
    "x": ("What is {a} times {b}?", "What is {a} x {b}?", "Can you multiply {a} by {b}?",
          "What is {a} multiplied by {b}?", "How much is {a} times {b}?",
          "There are {a} bags with {b} {o} in each. How many {o} are there in total?"),
}
RECIPIENTS: tuple[str, ...] = PEOPLE + RECIPIENT_EXTRAS


# Every table above, named once: the judge builds its sense of "a word the world uses" from this list, so a new
# table joins the judge's vocabulary by being added here (a test checks that none is left out).
TABLES: tuple[object, ...] = (
    NAMES, ROLES, RELATIONS, PEOPLE, TOYS, PETS, COMPANIONS, ACTIVITIES, WRONG_ACTIVITIES, HARMFUL_ACTIVITIES,
    ACTIVITY_EXTRAS, CARE_MATERIALS, CARE_ITEMS, PLURAL_ITEMS, CARE_ADVICE, WRONG_CARE, HARMFUL_CARE, DISHES,
    COOKING_EXTRAS, WRONG_COOKING, HARMFUL_COOKING, PLACES, TRIP_LENGTHS, PACKING_ITEMS, WRONG_PACKING, PACKING_EXTRAS,
    HARMFUL_PACKING, WORDS, WORD_SOURCES, OCCASIONS, GREETING_WARMTH, RECIPIENT_EXTRAS, ARITHMETIC_OBJECTS,
    ARITHMETIC_ANSWERS, ARITHMETIC_WORDS, ARITHMETIC_EXTRAS, DEFINITION_EXTRAS, LEADS, FRIENDLY_OPENERS,
    NEUTRAL_OPENERS, FRIENDLY_CLOSERS, INTENT_CLOSERS, RUDE_OPENERS, RUDE_CLOSERS, DISMISSIVE, GENERIC_DISMISSIVE,
    DIGRESSIONS, CONTINUATIONS, GENERIC_HARMFUL, OPENINGS, WHEN, ACTIVITY_TEMPLATES, POSSESSORS, CARE_WHEN, SPILLS,
    CARE_TEMPLATES, COOK_WHEN, COOK_TEMPLATES, TRIP_COMPANY, PACK_TEMPLATES, DEFINE_CONTEXT, DEFINE_TEMPLATES,
    GREET_ADJ, GREET_TEMPLATES, ARITH_SUFFIX, ARITH_TEMPLATES, RECIPIENTS,
)


def capitalize(text: str) -> str:
    """The first letter upper-cased, the rest untouched (str.capitalize would lower "Mia")."""
    return text[:1].upper() + text[1:]


def pronoun(item: str) -> str:
    """The pronoun for `item`: "them" when it is named in the plural ("wool socks"), else "it"."""
    return "them" if item in PLURAL_ITEMS else "it"
