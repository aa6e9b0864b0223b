"""Words and their category: the lexicon of the `categories` source (iclscope.data.synthetic).

Four categories of common English nouns, written out by hand: animals, foods, countries (states
with a one-word English name) and jobs. No word is in two categories, case-insensitively (the
animal "turkey" is left out for the country), and animals usually eaten (chicken, salmon, crab,
...) are left out, so that every word's category is unambiguous. A word's category is the known
answer of the `categories` classification task (docs/methods.md §5.1); the lists are data, so an
edit reruns every job that reads them.
"""

from __future__ import annotations

ANIMALS = """
aardvark alligator alpaca anteater antelope ape armadillo baboon badger bat bear beaver bee beetle
bison boar buffalo bull butterfly camel canary caribou cat caterpillar cheetah chimpanzee chipmunk
cobra cockroach cougar cow coyote crane cricket crocodile crow deer dingo dog dolphin donkey dove
dragonfly duck eagle eel elephant elk emu falcon ferret finch flamingo fly fox frog gazelle gecko
gerbil giraffe gnat goat goose gopher gorilla grasshopper hamster hare hawk hedgehog heron
hippopotamus hornet horse hummingbird hyena iguana impala jackal jaguar jellyfish kangaroo koala
ladybug lemur leopard lion lizard llama lynx macaw magpie mammoth manatee meerkat mink mole mongoose
monkey moose mosquito moth mouse mule newt octopus opossum orangutan ostrich otter owl ox panda
panther parrot peacock pelican penguin pheasant pig pigeon platypus porcupine possum puffin puma
rabbit raccoon ram rat raven reindeer rhinoceros robin salamander scorpion seal shark sheep skunk
sloth slug snail snake sparrow spider squirrel starfish stork swan tapir termite tiger toad tortoise
toucan turtle vulture walrus wasp weasel whale wolf wombat woodpecker worm yak zebra
""".split()


FOODS = """
almond anchovy apple apricot artichoke asparagus avocado bacon bagel baguette banana barley bean
beef beet biscuit blackberry blueberry bratwurst bread brie brisket broccoli broth brownie burger
burrito butter cabbage cake caramel carrot cashew casserole cauliflower celery cereal cheddar cheese
cheesecake cherry chickpea chili chocolate chowder cinnamon coconut cookie corn couscous cracker
cranberry crepe croissant cucumber cupcake curry custard date donut dumpling egg eggplant falafel
fig fudge garlic ginger granola grape grapefruit gravy ham hamburger hazelnut honey hummus jam jelly
kale kebab ketchup kiwi lasagna leek lemon lentil lettuce lime lollipop macaroni mango margarine
marmalade marshmallow mayonnaise meatball meatloaf melon meringue mozzarella muffin mushroom mustard
nacho noodle nutmeg oatmeal olive omelet onion orange paella pancake papaya parmesan pasta pastry
pea peach peanut pear pecan pepper pesto pickle pie pineapple pistachio pizza plum popcorn popsicle
pork porridge potato pretzel pudding pumpkin quiche radish raisin raspberry ravioli rice risotto
salad salami sandwich sauerkraut sausage scone sorbet soup spaghetti spinach squash steak stew
strawberry sushi syrup taco tangerine toast tofu tomato tortilla truffle turnip vanilla vinegar
wafer waffle walnut watermelon yam yogurt zucchini
""".split()


COUNTRIES = """
Afghanistan Albania Algeria Andorra Angola Argentina Armenia Australia Austria Azerbaijan Bahamas
Bahrain Bangladesh Barbados Belarus Belgium Belize Benin Bhutan Bolivia Bosnia Botswana Brazil
Brunei Bulgaria Burundi Cambodia Cameroon Canada Chad Chile China Colombia Comoros Congo Croatia
Cuba Cyprus Czechia Denmark Djibouti Dominica Ecuador Egypt Eritrea Estonia Eswatini Ethiopia Fiji
Finland France Gabon Gambia Georgia Germany Ghana Greece Grenada Guatemala Guinea Guyana Haiti
Honduras Hungary Iceland India Indonesia Iran Iraq Ireland Israel Italy Jamaica Japan Jordan
Kazakhstan Kenya Kiribati Kosovo Kuwait Kyrgyzstan Laos Latvia Lebanon Lesotho Liberia Libya
Liechtenstein Lithuania Luxembourg Madagascar Malawi Malaysia Maldives Mali Malta Mauritania
Mauritius Mexico Micronesia Moldova Monaco Mongolia Montenegro Morocco Mozambique Myanmar Namibia
Nauru Nepal Netherlands Nicaragua Niger Nigeria Norway Oman Pakistan Palau Panama Paraguay Peru
Philippines Poland Portugal Qatar Romania Russia Rwanda Samoa Senegal Serbia Seychelles Singapore
Slovakia Slovenia Somalia Spain Sudan Suriname Sweden Switzerland Syria Taiwan Tajikistan Tanzania
Thailand Togo Tonga Tunisia Turkey Turkmenistan Tuvalu Uganda Ukraine Uruguay Uzbekistan Vanuatu
Venezuela Vietnam Yemen Zambia Zimbabwe
""".split()


JOBS = """
accountant acrobat actor analyst announcer archaeologist architect astronaut astronomer athlete
attorney auditor baker banker barber bartender biologist blacksmith blogger bookkeeper bricklayer
broker butcher butler carpenter cartographer cashier chauffeur chef chemist cleaner clerk coach
cobbler comedian composer conductor cook counselor courier curator dancer dentist designer detective
dietitian diplomat director dispatcher doctor driver drummer economist editor electrician engineer
farmer firefighter fisherman florist gardener geologist glazier goldsmith guard guitarist
hairdresser herbalist historian illustrator inspector instructor interpreter janitor jeweler jockey
journalist judge juggler landlord lawyer lecturer librarian lifeguard locksmith lumberjack magician
manager mason mathematician mechanic merchant midwife miller miner minister musician nanny navigator
novelist nurse optician painter paramedic pastor pharmacist philosopher photographer physician
physicist pianist pilot plasterer plumber poet policeman politician postman potter priest professor
programmer psychologist publisher ranger receptionist reporter researcher roofer sailor salesman
scientist sculptor secretary senator sergeant shepherd sheriff shoemaker singer skipper soldier
statistician steward stockbroker stylist surgeon surveyor tailor tanner teacher technician therapist
tiler translator trucker tutor typist upholsterer usher veterinarian violinist waiter waitress
weaver welder writer zoologist
""".split()


# category -> its words, in the order of the classes of config/examples/claims.yaml
CATEGORIES = {"animal": ANIMALS, "food": FOODS, "country": COUNTRIES, "job": JOBS}
